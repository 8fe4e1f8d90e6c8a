"""Errors that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: a field, file or flag that is not allowed.

    The message names the field path (``spec.training.steps``), file or line and
    says what is allowed. The CLI prints it without a traceback and exits 2.
    """
