"""The served form of a trained model: raw pixels in, class names and probabilities out.

`save_model` is an MLflow flavor for `mlflow.models.Model.log`: it saves the PyTorch flavour
(pt2, so `mlflow.pytorch.load_model` still loads it) of a module that standardizes uint8
pixels itself and answers probabilities, and points the pyfunc flavour at this file's
`_load_pyfunc` (MLflow's hook for a flavor's loader module), which names the classes. This file is copied into every logged model
(`code/`), so it imports nothing of mnistflow.
"""
from __future__ import annotations

import json
import os

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn

CLASSES_FILE = "classes.json"


class RawPixelClassifier(nn.Module):
    """uint8 images (N,C,H,W), 0-255 as they come -> class probabilities."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        # per channel, as the training loop's Normalizer
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() / 255 - self.mean) / self.std).softmax(1)


def save_model(path, mlflow_model, *, pytorch_model: nn.Module, classes: list[str], **kwargs) -> None:
    mlflow.pytorch.save_model(pytorch_model, path, mlflow_model=mlflow_model, code_paths=[__file__],
                              serialization_format="pt2", **kwargs)
    pyfunc = mlflow_model.flavors["python_function"]
    pyfunc["loader_module"] = "serving"  # code/serving.py: this file
    with open(os.path.join(path, pyfunc["data"], CLASSES_FILE), "w") as f:
        json.dump(classes, f)
    mlflow_model.save(os.path.join(path, "MLmodel"))


class _Classifier:
    """The pyfunc form: uint8 pixels in, per image the class name, its probability and all."""

    def __init__(self, module: nn.Module, classes: list[str]):
        self.module, self.classes = module, classes

    def get_raw_model(self):
        return self.module

    def predict(self, data, params=None) -> pd.DataFrame:
        with torch.no_grad():
            probabilities = self.module(torch.from_numpy(np.asarray(data, dtype=np.uint8))).numpy()
        return pd.DataFrame({
            "class": [self.classes[i] for i in probabilities.argmax(1)],
            "probability": probabilities.max(1).astype(float),
            "probabilities": [dict(zip(self.classes, map(float, row))) for row in probabilities],
        })


def _load_pyfunc(path, model_config=None):
    """MLflow's loader-module hook (`loader_module: serving`): `path` is the model's data folder;
    the model is the folder above it, loaded through the PyTorch flavour's public loader."""
    with open(os.path.join(path, CLASSES_FILE)) as f:
        classes = json.load(f)
    return _Classifier(mlflow.pytorch.load_model(os.path.dirname(os.path.abspath(path))), classes)


def signature(batch_shape: tuple[int, ...]):
    """uint8 pixels in (any batch size); per image the class, its probability, all probabilities."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Map, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *batch_shape[1:]))]),
        outputs=Schema([ColSpec("string", "class"), ColSpec("double", "probability"),
                        ColSpec(Map(DataType.double), "probabilities")]))
