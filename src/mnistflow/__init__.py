"""mnistflow: a reproducible DVC + MLflow pipeline for the MNIST family of classifiers."""
import importlib.util
import sys

# A stage started by a Python without the project's packages (`.venv/bin/dvc` run from a shell
# whose `python` is the system's) gets one line on what to do, not an import traceback.
_MISSING = [m for m in ("torch", "torchvision", "mlflow", "yaml") if importlib.util.find_spec(m) is None]
if _MISSING:
    sys.exit(f"error: {sys.executable} lacks {', '.join(_MISSING)}: run `source .venv/bin/activate` "
             "(or `make repro`) first")
