"""DVC stage evaluate@MODEL: WEIGHTS on the test set and every variant -> METRICS (accuracy), DETAIL
(every metric), PER_CLASS (json), RELIABILITY (csv), CONFUSION_DIR."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # also in DVC's temp exp copies

from mnistflow.core.config import load_config  # noqa: E402
from mnistflow.core.errors import run_stage  # noqa: E402
from mnistflow.core.numerics import pin  # noqa: E402


def main() -> None:
    model, weights, data_dir, metrics, detail, per_class, reliability, confusion_dir = map(Path, sys.argv[1:])
    cfg = load_config()
    pin(cfg.numerics.mode, cfg.numerics.threads)  # before torch loads: it reads the pins once
    from mnistflow.evaluate.evaluation import evaluate_model

    evaluate_model(cfg, str(model), weights, data_dir, metrics, detail, per_class, reliability, confusion_dir)


if __name__ == "__main__":
    run_stage(main)
