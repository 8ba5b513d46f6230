"""Errors a user can cause. The CLIs print them as one line and exit non-zero, without a traceback."""


class UserError(Exception):
    """Bad input, bad config, a missing model or package: something the user can fix.

    The message must say what was wrong and what was expected (file, line, field where known).
    """

    exit_code = 2
