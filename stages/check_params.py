"""DVC stage check_params [STAMP]: validate params.yaml before any other stage (keys, values, and
that each model takes the dataset's images) and, where MLFLOW_TRACKING_URI names a server, that
it answers and lets us in; then mark FAILED the runs killed processes left RUNNING. Write STAMP,
always the same bytes, when valid. DVC runs it on every `dvc repro` (always_changed): what it
checks beside params.yaml (the server, the store) is not a file DVC can hash."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # also in DVC's temp exp copies

from mnistflow.core.config import load_config  # noqa: E402
from mnistflow.data.datasets import DATASETS  # noqa: E402
from mnistflow.core.errors import run_stage  # noqa: E402
from mnistflow.core.io import write_bytes  # noqa: E402
from mnistflow.models import check_input, model_names  # noqa: E402
from mnistflow.tracking import reap_dead_runs  # noqa: E402


def main() -> None:
    cfg = load_config("params.yaml", model_names())
    for name in cfg.train.models:
        check_input(name, cfg.data.dataset, DATASETS[cfg.data.dataset].shape)
    reap_dead_runs()  # its client asks a tracking server first whether it answers and lets us in
    if sys.argv[1:]:
        write_bytes(sys.argv[1], b"params.yaml is valid\n")


if __name__ == "__main__":
    run_stage(main)
