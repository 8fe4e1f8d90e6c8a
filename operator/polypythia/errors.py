"""Errors that the CLI turns into a one-line message: exit 2 (usage) or 1 (runtime)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: a field, file or flag that is not allowed.

    The message names the field path (``spec.training.steps``), file or line and
    says what is allowed. The CLI prints it without a traceback and exits 2.
    """


class RuntimeFault(Exception):
    """A fault while running (storage, a held lease, a full disk), not the user's input.

    The message names the file, object or endpoint; the CLI prints it without a
    traceback and exits 1.
    """
