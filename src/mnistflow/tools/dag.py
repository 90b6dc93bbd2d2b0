"""The pipeline's stages and what each runs after, readable at 100 columns (`dvc dag` draws
every edge and needs about 200). A stage per model is one line: `train@<model>` runs after
`preprocess` for every model in train.models. Read from `dvc dag --dot`, DVC's own output,
with a DOT parser (pydot, which DVC itself writes it with).

    mnistflow dag            # the table
    mnistflow dag --mermaid  # DVC's mermaid chart, as docs/pipeline.md shows it
"""
from __future__ import annotations

import re
import subprocess
import sys

from mnistflow.core.errors import MnistflowError
from mnistflow.cli import Parser


def dvc_dag(fmt: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", "dag", f"--{fmt}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise MnistflowError(f"dvc dag failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def edges(dot: str) -> dict[str, set[str]]:
    """stage -> the stages it runs after, from DVC's DOT graph (its edges point downstream)."""
    import pydot

    (graph,) = pydot.graph_from_dot_data(dot)
    name = lambda node: node.strip('"')  # noqa: E731  (DOT quotes names with @)
    after: dict[str, set[str]] = {name(n.get_name()): set() for n in graph.get_nodes()}
    for edge in graph.get_edges():
        after.setdefault(name(edge.get_destination()), set()).add(name(edge.get_source()))
        after.setdefault(name(edge.get_source()), set())
    return after


def table(after: dict[str, set[str]]) -> str:
    """One line per stage, a foreach stage's items as `<model>`, in the order the stages run."""
    depth: dict[str, int] = {}

    def level(stage: str) -> int:  # the longest chain of stages before it
        if stage not in depth:
            depth[stage] = 1 + max((level(b) for b in after[stage]), default=0)
        return depth[stage]

    rows: dict[str, dict[str, None]] = {}  # ordered sets
    for stage in sorted(after, key=lambda s: (level(s), s)):
        model = stage.split("@", 1)[1] if "@" in stage else None
        general = re.sub(r"@.+$", "@<model>", stage)
        rows.setdefault(general, {}).update(dict.fromkeys(  # train@cnn before evaluate@cnn: train@<model>
            b.replace(f"@{model}", "@<model>") if model else re.sub(r"@.+$", "@*", b)
            for b in sorted(after[stage], key=lambda b: (level(b), b))))
    width = max(len("stage"), *map(len, rows))
    lines = [f"{'stage'.ljust(width)}  runs after"]
    lines += [f"{s.ljust(width)}  {', '.join(before) or '-'}" for s, before in rows.items()]
    items = sorted({s.split("@", 1)[1] for s in after if "@" in s})
    if items:
        lines.append(f"<model>: each of train.models ({', '.join(items)})")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "mnistflow dag") -> None:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--mermaid", action="store_true", help="DVC's mermaid chart instead")
    args = parser.parse_args(argv)
    print(dvc_dag("mermaid") if args.mermaid else table(edges(dvc_dag("dot"))))


if __name__ == "__main__":
    from mnistflow.core.errors import run_stage

    run_stage(main)
