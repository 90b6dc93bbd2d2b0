"""The errors a user can cause and fix, and how a stage reports them."""
from __future__ import annotations

import errno
import logging
import signal
import sqlite3
import sys
from typing import Callable


class MnistflowError(Exception):
    """An error with a message meant for the user; no traceback is shown for it."""

    exit_code = 1


class ConfigError(MnistflowError):
    """params.yaml holds a bad key or value."""

    exit_code = 2


class DataError(MnistflowError):
    """Input data is missing, corrupt or of the wrong shape."""


class OutOfSpace(DataError):
    """A disk filled up while the stage wrote to it."""


def out_of_space(exc: BaseException | None) -> str | None:
    """What ran out of space, when ENOSPC (or SQLite's SQLITE_FULL) is anywhere in `exc`'s chain,
    also behind SQLAlchemy's wrapper (its `orig`), as MLflow's store raises it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return f"writing {exc.filename}" if exc.filename else "writing"
        if isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
            return "writing an SQLite database (the MLflow store?)"
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "orig", None)
    return None


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a user error prints one message and exits non-zero, no traceback.

    SIGTERM is turned into KeyboardInterrupt so cleanup (an MLflow run ending KILLED,
    temporary files removed) runs for it as for Ctrl-C; once main is over, it is ignored.
    """
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            main()
        finally:
            # The process is on its way out: a SIGTERM now (torchrun stopping a worker that is
            # already exiting) must not raise into the report below or atexit's finalizers.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except MnistflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        where = out_of_space(exc)
        if where is None:
            raise
        print(f"error: no space left on device {where}; free some space and run again", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
