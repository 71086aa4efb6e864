"""The two errors every command reports as one line, kept free of torch and every other import.

``UsageError``: the user asked for something impossible (bad arguments, config or input paths),
exit code 2. ``DataError``: the data itself is broken in a way the user must fix (a failed
verification, a torn file), exit code 1. ``toolkit.cli.run_cli`` turns both into one ``error:``
line. Library code below the command layer (``toolkit.models``) raises plain ``ValueError`` and
``TypeError`` as torchvision does; the commands map those with ``usage_errors``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


class UsageError(Exception):
    """The user asked for something impossible: printed as one line, exit code 2."""


class DataError(Exception):
    """The data is broken in a way the user must fix: printed as one line, exit code 1."""


def on_every_rank(err: Exception) -> Exception:
    """Mark an error that every process raises together, so that only the main process prints it."""
    err.on_every_rank = True
    return err


@contextlib.contextmanager
def usage_errors(context: str = "") -> Iterator[None]:
    """Turn the ``ValueError``/``TypeError`` of library code (bad model arguments) into a ``UsageError``."""
    try:
        yield
    except (ValueError, TypeError) as err:
        raise UsageError(f"{context}: {err}" if context else str(err)) from None
