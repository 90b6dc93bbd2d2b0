"""The one registry of model names. Adding a model: one module, one `@register` line."""
from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

from mnistflow.errors import ConfigError

_MODELS: dict[str, Callable[[], nn.Module]] = {}


def register(name: str):
    def add(factory: Callable[[], nn.Module]):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = factory
        return factory
    return add


def model_names() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str) -> nn.Module:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (known: {', '.join(model_names())})")
    return _MODELS[name]()
