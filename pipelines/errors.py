"""Errors a user can fix. The CLI prints their message (which names the fix) and exits 2."""


class CmiError(Exception):
    """Bad input or settings: the message says what is wrong and how to fix it."""
