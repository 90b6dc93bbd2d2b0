"""DVC stage train@MODEL: DATA_DIR -> WEIGHTS, METRICS (json), HISTORY (csv); one MLflow run."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # also in DVC's temp exp copies

from mnistflow.core.config import load_config  # noqa: E402
from mnistflow.core.errors import run_stage  # noqa: E402
from mnistflow.core.numerics import pin  # noqa: E402


def main() -> None:
    model, data_dir, weights, metrics, history = sys.argv[1:]
    cfg = load_config()
    pin(cfg.numerics.mode, cfg.numerics.threads, cfg.train.nproc)  # before torch loads: it reads the pins once
    from mnistflow.train import distributed
    from mnistflow.core.device import select_device
    from mnistflow.train.training import train_model

    if cfg.train.nproc > 1 and not distributed.launched():
        distributed.run_workers(cfg.train.nproc, select_device(cfg.device))
        return
    train_model(cfg, model, Path(data_dir), Path(weights), Path(metrics), Path(history))


if __name__ == "__main__":
    run_stage(main)
