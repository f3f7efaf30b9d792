"""The one exception type that means "the user asked for something impossible"."""


class UserError(Exception):
    """A mistake in input or config: the CLI prints it as one line and exits non-zero."""
