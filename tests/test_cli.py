"""`mnistflow`, the one command: installed into .venv by the set-up, its help lists every command,
and a mistake is one line with exit status 2."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from mnistflow.cli import COMMANDS

EXPECTED = {"ui", "links", "serve", "lineage", "restore", "exps", "dag", "compare-optimizers", "server",
            "screenshots", "lock-check", "repro-check", "numcheck", "bench", "torchrun", "sources", "tune",
            "diff-report", "repro-gate", "remote-check"}


def mnistflow(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "mnistflow"  # the console script pyproject.toml declares
    if not exe.exists():
        pytest.skip("mnistflow is not installed in this Python's environment (make venv installs it)")
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    out = mnistflow("--help")
    assert out.returncode == 0
    listed = {line.split()[0] for line in out.stdout.split("commands:")[1].splitlines() if line.startswith("  ")}
    assert listed == EXPECTED


@pytest.mark.parametrize("args, says", [
    (["bogus"], "invalid choice: 'bogus'"),
    (["exps", "--bogus"], "unrecognized arguments: --bogus"),
    (["lineage"], "the following arguments are required: run_id"),
    (["server", "restart"], "invalid choice: 'restart'"),
    (["restore", "only-one-argument"], "the following arguments are required: dest"),
    (["torchrun", "--nnodes"], "expected one argument"),
])
def test_a_mistake_is_one_line_and_exit_2(args, says):
    out = mnistflow(*args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error:") and says in out.stderr


@pytest.mark.parametrize("command", sorted(EXPECTED - {"bench"}))  # bench's help is the benchmark script's own
def test_each_command_answers_help_without_work(command, capsys):
    # In this process, as `mnistflow` calls it (a Python apiece would be 20 starts of the console script)
    module, function = COMMANDS[command][0].split(":")
    try:
        code = getattr(importlib.import_module(module), function)(["--help"], f"mnistflow {command}")
    except SystemExit as exit:  # argparse's help
        code = exit.code
    out = capsys.readouterr()
    assert code in (0, None) and out.out.startswith(f"usage: mnistflow {command}"), out.err


def test_server_start_names_the_password_where_it_is():
    from mnistflow.tools.server import how_to_use

    from_env = how_to_use("http://127.0.0.1:5050", Path(".server"), password_from_env=True)
    assert 'MLFLOW_TRACKING_PASSWORD="$MNISTFLOW_ADMIN_PASSWORD"' in from_env and "admin-password" not in from_env
    # tune's studies: the server's PostgreSQL, on its host at the next port, with a password of their own
    assert 'MNISTFLOW_TUNE_STORAGE="postgresql+psycopg://optuna:$(cat .server/optuna-password)@127.0.0.1:5051/optuna"' \
        in from_env
    generated = how_to_use("http://127.0.0.1:5050", Path(".server"), password_from_env=False)
    assert 'MLFLOW_TRACKING_PASSWORD="$(cat .server/admin-password)"' in generated
