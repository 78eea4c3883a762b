"""Errors that reach the user as one clear message and exit status 2."""


class InputError(Exception):
    """Bad user input (config, data file, directive).

    The message names the offending field and how to fix it; the CLI prints it
    without a traceback and exits with status 2.
    """


class RunError(Exception):
    """A run that cannot produce a trustworthy result (e.g. too few shards succeeded).

    The CLI prints the message without a traceback and exits with status 1.
    """
