"""DVC stage train@MODEL: DATA_DIR -> WEIGHTS, METRICS (json), HISTORY (csv); one MLflow run."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # also in DVC's temp exp copies

from mnistflow.config import load_config  # noqa: E402
from mnistflow.errors import ConfigError, run_stage  # noqa: E402
from mnistflow.training import train_model  # noqa: E402


def main() -> None:
    model, data_dir, weights, metrics, history = sys.argv[1:]
    cfg = load_config()
    if model not in cfg.model_configs:
        raise ConfigError(f"no train.{model} section in params.yaml")
    train_model(cfg, model, Path(data_dir), Path(weights), Path(metrics), Path(history))


if __name__ == "__main__":
    run_stage(main)
