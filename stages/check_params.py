"""DVC stage check_params [STAMP [SOURCE]]: validate params.yaml before any other stage (keys,
values, that each model takes the dataset's images, that the data source is there:
data.sources) and, where MLFLOW_TRACKING_URI names a server, that it answers and lets us in.
When valid, write STAMP, always the same bytes, and SOURCE, the manifest of what the download
stage reads (your images by content). It runs when params.yaml or the source changes, and
imports neither torch nor MLflow: a second `dvc repro` with nothing changed runs nothing. (Runs
a killed stage left RUNNING are marked FAILED by whatever next opens the store: see
tracking.store.)"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # also in DVC's temp exp copies

from mnistflow.core.config import load_config  # noqa: E402
from mnistflow.core.errors import run_stage  # noqa: E402
from mnistflow.core.io import repo_root, write_bytes, write_json  # noqa: E402
from mnistflow.data.sources import check_source  # noqa: E402
from mnistflow.models import check_input, model_names  # noqa: E402
from mnistflow.tracking.store import check_server  # noqa: E402


def main() -> None:
    stamp, source = (sys.argv[1:] + [None, None])[:2]
    cfg = load_config("params.yaml", model_names())
    for name in cfg.train.models:
        check_input(name, cfg.data.dataset, cfg.data.image_shape)
    manifest = check_source(cfg.data, repo_root())
    if cfg.device in ("cuda", "mps"):  # torch loads only to ask (1-2 s)
        from mnistflow.core.device import select_device
        select_device(cfg.device)
    check_server()  # a tracking server: does it answer and let us in? (urllib: no MLflow import)
    if stamp:
        write_bytes(stamp, b"params.yaml is valid\n")
    if source:
        write_json(source, manifest)


if __name__ == "__main__":
    run_stage(main)
