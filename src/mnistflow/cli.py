"""`mnistflow`: the project's commands, one per task; the Makefile's targets are short aliases.

Each command lives in its own module and is imported only when it runs, so `mnistflow --help`
and a typo answer at once. A wrong command or argument is one line and exit status 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# command: (module:function, help); the function takes (argv, prog).
COMMANDS = {
    "ui": ("mnistflow.tracking.commands:serve_ui", "the MLflow UI over the repo's store; prints the pages to open"),
    "links": ("mnistflow.tracking.commands:links", "repoint a moved store and print the pages to open"),
    "serve": ("mnistflow.tracking.commands:serve", "a model's champion as a REST endpoint (raw pixels in)"),
    "lineage": ("mnistflow.tracking.commands:show_lineage", "what made an MLflow run: commit, params, DVC hashes"),
    "restore": ("mnistflow.tracking.commands:restore", "a run's code, params, data and model, into a new folder"),
    "exps": ("mnistflow.tools.exps:main", "which params gave which accuracy: one table per model"),
    "dag": ("mnistflow.tools.dag:main", "the pipeline's stages and what each runs after"),
    "compare-optimizers": ("mnistflow.tools.compare:main", "the tutorials' optimizer comparison as queued experiments"),
    "tune": ("mnistflow.tools.tune:main", "hyperparameter search: each trial a DVC experiment, the study in MLflow"),
    "torchrun": ("mnistflow.train.distributed:main", "torchrun for several machines, failures in one line each"),
    "server": ("mnistflow.tools.server:main", "a team tracking server: start or stop"),
    "screenshots": ("mnistflow.tools.screenshots:main", "the docs' MLflow screenshots from the repo's store"),
    "sources": ("mnistflow.tools.sources:main", "re-read your images (dataset: folder) before `dvc repro`"),
    "diff-report": ("mnistflow.tools.diffreport:main", "what a change did to the models, against main: Markdown for a pull request"),
    "repro-gate": ("mnistflow.tools.gate:main", "after dvc repro in CI: is dvc.lock the committed one? names what differs"),
    "remote-check": ("mnistflow.tools.s3:main", "can the DVC remote's S3 bucket be reached? (before push and pull)"),
    "lock-check": ("mnistflow.tools.lockcheck:main", "does dvc.lock record the committed code and params?"),
    "repro-check": ("mnistflow.tools.reprocheck:main", "the pipeline twice from empty caches: do the outputs agree?"),
    "numcheck": ("mnistflow.tools.numcheck:main", "the default models' weights natively or on an emulated CPU"),
    "bench": ("mnistflow.tools.bench:main", "training speed: the tutorial's textbook loop against the project's"),
}


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="mnistflow", usage="mnistflow [-h] <command> [args ...]", description=__doc__.splitlines()[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog="commands:\n" + "\n".join(f"  {name:20} {text}" for name, (_, text) in COMMANDS.items())
                    + "\n\n`mnistflow <command> --help` says what each takes.")
    parser.add_argument("command", metavar="command", choices=COMMANDS, help=argparse.SUPPRESS)
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # DVC runs each stage's `python` from PATH: make it this interpreter's, so `.venv/bin/mnistflow`
    # works from a shell without the venv activated.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    module, function = COMMANDS[args.command][0].split(":")
    command = getattr(importlib.import_module(module), function)
    from mnistflow.core.errors import run_stage

    run_stage(lambda: command(args.args, f"mnistflow {args.command}"))


if __name__ == "__main__":
    main(sys.argv[1:])
