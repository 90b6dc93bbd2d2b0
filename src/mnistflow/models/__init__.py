"""Model registry; importing this package registers every model module below."""
from mnistflow.models.registry import check_input, create_model, model_names, register
from mnistflow.models import cnn, dynamic, lenet, mlp, seq_cnn, two_layer  # noqa: F401  (they register themselves)

__all__ = ["check_input", "create_model", "model_names", "register"]
