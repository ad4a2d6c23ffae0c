"""The one exception type for mistakes a user can fix.

The CLI prints a `UserError` as a single message and exits non-zero without a traceback; any
other exception is a bug in synthgen and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (recipe, options, output directory), with how to fix it."""
