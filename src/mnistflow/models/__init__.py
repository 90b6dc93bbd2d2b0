"""The models: one module each, named in the registry (importing this package loads no model and no torch)."""
from mnistflow.models.registry import MODELS, check_input, create_model, model_names

__all__ = ["MODELS", "check_input", "create_model", "model_names"]
