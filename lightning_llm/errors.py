"""The exception types that end a stage with one line instead of a traceback."""


class UserError(Exception):
    """A mistake in input or config: the CLI prints it as one line and exits non-zero."""


class NothingToDo(Exception):
    """The request is already satisfied (a resume of a finished run): the CLI says so and exits 0."""
