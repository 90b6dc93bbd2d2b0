"""The errors a user can cause and fix, and how a stage reports them."""
from __future__ import annotations

import logging
import signal
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


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a user error prints one message and exits non-zero, no traceback.

    SIGTERM is turned into KeyboardInterrupt so cleanup (an MLflow run ending KILLED,
    temporary files removed) runs for it as for Ctrl-C.
    """
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except MnistflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
