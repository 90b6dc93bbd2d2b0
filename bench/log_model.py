"""What naming the pip requirements saves per logged model.

Logs the cnn's served form (`mlflow.models.Model.log` with the serving flavor, as the train
stage does), alternately with MLflow inferring its requirements (the baseline: a fresh Python
process that imports the model's modules) and with the arguments tracking.log_model passes
(requirements named), into a throwaway sqlite store. Prints the median of each and their ratio.

    .venv/bin/python bench/log_model.py [repeats]
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import mlflow  # noqa: E402
import torch  # noqa: E402

from mnistflow.models import create_model  # noqa: E402
from mnistflow.tracking import log_model_args  # noqa: E402


def main(repeats: int = 3) -> None:
    model = create_model("cnn").eval()
    example = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    named = log_model_args(model, 0.29, 0.35, [str(i) for i in range(10)], example)
    ways = {"inferred": {k: v for k, v in named.items() if k != "pip_requirements"}, "named": named}
    times: dict[str, list[float]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as store:
        mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
        mlflow.set_experiment(experiment_id=mlflow.create_experiment("bench", f"{store}/artifacts"))
        for i in range(repeats + 1):
            for way, kwargs in ways.items():
                with mlflow.start_run():
                    start = time.perf_counter()
                    mlflow.models.Model.log(artifact_path=None, name="cnn", **kwargs)
                    if i:  # the first round warms up torch.export
                        times[way].append(time.perf_counter() - start)
    inferred, named_s = (statistics.median(times[w]) for w in ways)
    print(f"log_model, median of {repeats}: requirements inferred {inferred:.2f} s, "
          f"named {named_s:.2f} s; ratio {inferred / named_s:.1f}x")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
