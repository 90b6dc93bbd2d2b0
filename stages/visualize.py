"""DVC stage visualize: figures for every model (and the optimizer comparison OPTIMIZERS and the
hyperparameter study STUDY, when they are of this dataset) into FIGURES_DIR, every model's history in one CSV (HISTORY, for DVC's plots),
and the report page INDEX."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # also in DVC's temp exp copies

from mnistflow.core.config import load_config  # noqa: E402
from mnistflow.core.errors import run_stage  # noqa: E402
from mnistflow.core.numerics import pin  # noqa: E402


def main() -> None:
    data_dir, models_dir, train_dir, eval_dir, confusion_dir, optimizers, study, figures_dir, history, index = \
        map(Path, sys.argv[1:])
    cfg = load_config()
    pin(cfg.numerics.mode, cfg.numerics.threads)  # before torch loads: it reads the pins once
    from mnistflow.report.visualize import visualize

    visualize(cfg, data_dir, models_dir, train_dir, eval_dir, confusion_dir, optimizers, study, figures_dir, history,
              index)


if __name__ == "__main__":
    run_stage(main)
