"""The one registry of model names and the input shape each accepts. Adding a model: one
module, one `@register` line."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from mnistflow.core.errors import ConfigError

Shape = tuple[int, int, int]  # channels, height, width


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    accepts: Shape | None  # None: any shape (the model flattens its input), given to the factory


_MODELS: dict[str, _Entry] = {}


def register(name: str, accepts: Shape | None = (1, 28, 28)):
    def add(factory: Callable[..., nn.Module]):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = _Entry(factory, accepts)
        return factory
    return add


def model_names() -> list[str]:
    return sorted(_MODELS)


def _entry(name: str) -> _Entry:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (known: {', '.join(model_names())})")
    return _MODELS[name]


def _shape(shape: Shape) -> str:
    return "x".join(map(str, shape))


def check_input(name: str, dataset: str, shape: Shape) -> None:
    """Refuse a model paired with a dataset whose images it cannot take, naming both shapes."""
    accepts = _entry(name).accepts
    if accepts is not None and tuple(accepts) != tuple(shape):
        raise ConfigError(f"model {name!r} takes {_shape(accepts)} images (channels x height x width), "
                          f"but dataset {dataset!r} has {_shape(shape)}")


def create_model(name: str, shape: Shape = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """The model for images of `shape` and `num_classes` classes; one that takes a fixed shape is
    refused any other."""
    entry = _entry(name)
    if entry.accepts is None:
        return entry.factory(shape, num_classes=num_classes)
    if tuple(entry.accepts) != tuple(shape):
        raise ConfigError(f"model {name!r} takes {_shape(entry.accepts)} images, not {_shape(shape)}")
    return entry.factory(num_classes=num_classes)
