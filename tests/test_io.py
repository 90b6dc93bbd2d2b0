"""Atomic writes: a normal file's mode, and never a rename over something that is not a file;
how a stage reports a full disk and a signal as it exits."""
import os
import stat

import pytest

from mnistflow.core.errors import DataError
from mnistflow.core.io import write_bytes


def test_an_output_gets_the_mode_the_umask_gives_any_new_file(tmp_path):
    old = os.umask(0o027)
    try:
        write_bytes(tmp_path / "out.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o640


def test_a_path_that_is_not_a_regular_file_is_never_replaced(tmp_path):
    fifo = tmp_path / "fifo"  # as /dev/null would be, given as a stage's output path
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        write_bytes(fifo, b"x")
    assert fifo.is_fifo() and list(tmp_path.iterdir()) == [fifo]  # no temp file left either


def test_a_full_disk_is_found_anywhere_in_the_chain():
    """ENOSPC raised deep in a library (a write, SQLite's own error) is what the stage's one line names."""
    import errno

    from mnistflow.core.errors import out_of_space

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "models/mlp.pt")
        except OSError as inner:
            raise RuntimeError("API call failed") from inner
    except RuntimeError as exc:
        assert out_of_space(exc) == "writing models/mlp.pt"
    # SQLite's own error code, from a real database held to one more page than it has.
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (x BLOB)")
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(sqlite3.OperationalError) as full:
        db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    try:
        raise RuntimeError("MLflow: API request failed") from full.value
    except RuntimeError as exc:
        assert out_of_space(exc).startswith("writing an SQLite")
    assert out_of_space(RuntimeError("database or disk is full")) is None  # the text alone proves nothing
    assert out_of_space(OSError(errno.EACCES, "Permission denied")) is None


def test_a_sigterm_while_a_stage_exits_is_not_a_traceback():
    """torchrun stops a worker group as its workers exit: the SIGTERM can land in atexit's
    finalizers (torch's among them), after the stage's one line, and must add nothing to it."""
    import subprocess
    import sys

    exiting = """
import atexit, os, signal, time
from mnistflow.core.errors import MnistflowError, run_stage
def main():
    atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.2)))
    raise MnistflowError("another one is gone")
run_stage(main)
"""
    out = subprocess.run([sys.executable, "-c", exiting], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr) == (1, "error: another one is gone\n")
