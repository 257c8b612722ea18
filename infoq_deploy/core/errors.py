"""The one exception type the CLI turns into a single sentence and exit code 2."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do.

    Raised only at boundaries (argument parsing, file loading, validation); the
    CLI prints ``str(exc)`` on one line and exits non-zero without a traceback.
    """


class ConsumerRefused(Exception):
    """A flow that consumes an exported file (hls4ml, FINN) could not convert, compile or run it;
    the message is that flow's own error, on one line."""


class ConsumerTimeout(Exception):
    """A consumer flow's build and simulation ran past the time it was given (seconds: args[0])."""
