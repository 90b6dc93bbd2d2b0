"""DVC stage check_params [STAMP]: validate params.yaml before any other stage; write STAMP when valid."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # also in DVC's temp exp copies

from mnistflow.config import check_params  # noqa: E402
from mnistflow.errors import run_stage  # noqa: E402
from mnistflow.models import model_names  # noqa: E402


def main() -> None:
    check_params("params.yaml", sys.argv[1] if sys.argv[1:] else None, model_names())


if __name__ == "__main__":
    run_stage(main)
