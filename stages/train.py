"""DVC stage train@MODEL: DATA_DIR -> WEIGHTS, METRICS (json), HISTORY (csv); one MLflow run."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # also in DVC's temp exp copies

from mnistflow import distributed  # noqa: E402
from mnistflow.config import load_config  # noqa: E402
from mnistflow.device import select_device  # noqa: E402
from mnistflow.errors import run_stage  # noqa: E402
from mnistflow.models import model_names  # noqa: E402
from mnistflow.training import train_model  # noqa: E402


def main() -> None:
    model, data_dir, weights, metrics, history = sys.argv[1:]
    cfg = load_config("params.yaml", model_names())
    if cfg.train.nproc > 1 and not distributed.launched():
        distributed.run_workers(cfg.train.nproc, select_device(cfg.device))
        return
    train_model(cfg, model, Path(data_dir), Path(weights), Path(metrics), Path(history))


if __name__ == "__main__":
    run_stage(main)
