"""The one registry of model names: for each, its class in `mnistflow.models.<name>` and the input
shape it accepts. Listing names and checking shapes imports neither torch nor any model; a model's
module is imported when the model is made, so a stage depends on that module alone (dvc.yaml's
`src/mnistflow/models/${item}.py`). Adding a model: one module, one line in MODELS."""
from __future__ import annotations

import difflib
import importlib
from typing import NamedTuple

from mnistflow.core.errors import ConfigError

Shape = tuple[int, int, int]  # channels, height, width
MNIST_SHAPE: Shape = (1, 28, 28)


class Entry(NamedTuple):
    cls: str  # the class (or factory) in mnistflow.models.<name>
    accepts: Shape | None  # None: any shape (the model flattens its input), given to the class


MODELS: dict[str, Entry] = {
    "cnn": Entry("CNN", MNIST_SHAPE),
    "dynamic": Entry("DynamicNet", None),
    "lenet": Entry("LeNet", MNIST_SHAPE),
    "mlp": Entry("MLP", None),
    "seq_cnn": Entry("seq_cnn", (3, 32, 32)),
    "two_layer": Entry("TwoLayerNet", None),
}


def model_names() -> list[str]:
    return sorted(MODELS)


def _entry(name: str) -> Entry:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (known: {', '.join(model_names())})")
    return MODELS[name]


def _shape(shape: Shape) -> str:
    return "x".join(map(str, shape))


def check_input(name: str, dataset: str, shape: Shape) -> None:
    """Refuse a model paired with a dataset whose images it cannot take, naming both shapes."""
    accepts = _entry(name).accepts
    if accepts is not None and tuple(accepts) != tuple(shape):
        raise ConfigError(f"model {name!r} takes {_shape(accepts)} images (channels x height x width), "
                          f"but dataset {dataset!r} has {_shape(shape)}")


def model_class(name: str):
    """The model's class (or factory), from its own module (imported here, on first use)."""
    return getattr(importlib.import_module(f"mnistflow.models.{name}"), _entry(name).cls)


def create_model(name: str, shape: Shape = MNIST_SHAPE, num_classes: int = 10):
    """The model (a torch nn.Module) for images of `shape` and `num_classes` classes; one that
    takes a fixed shape is refused any other."""
    entry = _entry(name)
    if entry.accepts is None:
        return model_class(name)(shape, num_classes=num_classes)
    if tuple(entry.accepts) != tuple(shape):
        raise ConfigError(f"model {name!r} takes {_shape(entry.accepts)} images, not {_shape(shape)}")
    return model_class(name)(num_classes=num_classes)
