"""The train and probe commands run end to end and report mistakes as one line."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner

from synthgen.data.fixtures import write_solid_dataset
from synthgen.errors import UserError
from synthgen.train.commands import experiment, probe, train


class Group(click.Group):
    """What cli.py's group does with a UserError: one line, exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(2)


def cli() -> click.Group:
    group = Group()
    for command in (train, probe, experiment):
        group.add_command(command)
    return group


def test_train_then_probe(tmp_path):
    write_solid_dataset(tmp_path / "data", shards=2, groups_per_shard=4, views=2, size=8)
    for split in ("train", "test"):
        write_solid_dataset(tmp_path / split, shards=1, groups_per_shard=8, views=1, manifest=False)
    runner = CliRunner()
    result = runner.invoke(cli(), ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                                   "--views", "2", "--batch-size", "4", "--steps", "2",
                                   "--resolution", "8", "--width", "4", "--blocks", "1",
                                   "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output
    result = runner.invoke(cli(), ["probe", "--checkpoint", str(tmp_path / "run"),
                                   "--train", str(tmp_path / "train"), "--test", str(tmp_path / "test"),
                                   "--device", "cpu", "--json", str(tmp_path / "probe.json")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "probe.json").read_text())
    assert set(record) == {"checkpoint", "random-init"}
    assert record["checkpoint"]["test_samples"] == 8

    result = runner.invoke(cli(), ["train", str(tmp_path / "data"), "--out", str(tmp_path / "x"),
                                   "--views", "5", "--workers", "0"])
    assert result.exit_code == 2
    assert "views: 5 views per group asked" in result.output
