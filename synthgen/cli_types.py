"""Click parameter types shared by the command modules (cli.py, audit/, train/, world/, dev.py)."""

from __future__ import annotations

import click


class NamedPath(click.Path):
    """`click.Path` that refuses an empty value: Path("") is the current folder, so `--out
    "$OUT"` with OUT unset would read or write there among the user's files."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty; name a file or folder (an unset shell variable?)", param, ctx)
        return super().convert(value, param, ctx)


# A seed torch and numpy take (torch.manual_seed reads a signed or unsigned 64-bit number; a
# larger one is a traceback from inside torch).
SEED = click.IntRange(min=-2 ** 63, max=2 ** 64 - 1)
