"""The one exception type for a user's mistake: the CLI prints its message and exits 2, no traceback."""


class UserError(Exception):
    """A problem with the user's input (file, config, model name) that they can fix.

    The message must say what is wrong and, where it helps, what to do instead.
    """


class TrainingDiverged(UserError):
    """Training stopped because the loss stayed non-finite; the message says how often and where."""
