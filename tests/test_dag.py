"""The pipeline as a person reads it: `make dag` at 100 columns, and the chart in docs/pipeline.md
being what DVC draws for the committed dvc.yaml."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from mnistflow.tools import dag

ROOT = Path(__file__).resolve().parents[1]


def committed(fmt: str = "mermaid") -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", "dag", f"--{fmt}"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return proc.stdout.strip()


def test_docs_pipeline_chart_is_what_dvc_draws_for_the_committed_pipeline():
    page = (ROOT / "docs" / "pipeline.md").read_text()
    shown = re.search(r"```mermaid\n(.*?)\n```", page, re.S).group(1).strip()
    assert shown == committed("mermaid")
    assert dag.table(dag.edges(committed("dot"))) in page  # and the table beside it


def test_the_table_fits_100_columns_and_keeps_every_edge():
    after = dag.edges(committed("dot"))
    assert after["evaluate@cnn"] == {"preprocess", "train@cnn"}  # read from DVC's graph, not assumed
    text = dag.table(after)
    assert max(map(len, text.splitlines())) <= 100
    rows = dict(line.split(None, 1) for line in text.splitlines()[1:-1])
    assert rows["evaluate@<model>"] == "preprocess, train@<model>"
    assert rows["visualize"] == "preprocess, train@*, evaluate@*"
    # every edge DVC draws is on one line of the table
    for stage, before in after.items():
        general = re.sub(r"@.+$", "@<model>", stage)
        for b in before:
            shown = b.replace(stage.partition("@")[2], "<model>") if "@" in stage else re.sub(r"@.+$", "@*", b)
            assert shown in rows[general], (stage, b)


def test_a_stage_without_foreach_items_has_no_model_line():
    dot = 'strict digraph {\n"a";\n"b";\n"a" -> "b";\n}'
    assert dag.table(dag.edges(dot)).splitlines() == ["stage  runs after", "a      -", "b      a"]
