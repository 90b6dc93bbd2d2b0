"""Model registry; importing this package registers every model module below."""
from mnistflow.models.registry import create_model, model_names, register
from mnistflow.models import cnn, lenet, mlp  # noqa: F401  (they register themselves)

__all__ = ["create_model", "model_names", "register"]
