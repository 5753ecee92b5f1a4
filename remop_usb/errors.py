"""The one error type a user ever sees.

A :class:`UserError` is bad input: a config key, a file, a dataset layout. The command-line entry points catch it
and print its message as a single line (``error: ...``) with exit status 2, never a traceback. Messages say what is
wrong, where (file and line when there is one) and what was expected.
"""

import argparse


class UserError(Exception):
    """Bad input from the user; ``str(err)`` is the whole one-line message."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


def closest(key, valid, spell="'{}'".format) -> str:
    """``; did you mean <the closest valid name, spelled>?``, or "" when none is close."""
    import difflib

    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {spell(match[0])}?" if match else ""


def where(path, line=None) -> str:
    """``file:line`` (or just ``file``) for messages."""
    return f"{path}:{line}" if line is not None else str(path)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one-line :class:`UserError` s (exit status 2 through ``remop-usb``)."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")
