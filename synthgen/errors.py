"""The one exception type for mistakes a user can fix.

The CLI prints a `UserError` as a single message and exits non-zero without a traceback; any
other exception is a bug in synthgen and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (recipe, options, output directory), with how to fix it."""


def user_message(error: UserError) -> str:
    """What to print for `error`: its message; for a UserError raised in a DataLoader worker,
    which torch re-raises as UserError("Caught UserError in DataLoader worker process 0.\n
    Original Traceback ..."), the original message without the worker's traceback."""
    text = str(error)
    marker = f"{UserError.__module__}.{UserError.__qualname__}: "
    if text.startswith("Caught UserError") and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text
