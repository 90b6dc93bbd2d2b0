"""params.yaml -> a validated, typed, read-only config.

Everything the code knows about configuration comes through `load_config`.
A bad key or value raises `ConfigError` naming the key, the value and what is
allowed, before any stage does work.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from mnistflow.datasets import DATASETS
from mnistflow.errors import ConfigError
from mnistflow.io import write_bytes

DEVICES = ("auto", "cpu", "cuda", "mps")
OPTIMIZERS = ("sgd", "adam", "adadelta", "adagrad", "rmsprop")
IMAGE_SIZE = 28  # every dataset of the MNIST family is 28x28

# Each scheduler's own settings with their defaults; any other key is refused.
SCHEDULERS: dict[str, dict[str, Any]] = {
    "none": {},
    "step": {"step_size": 5, "gamma": 0.1},  # lr *= gamma every step_size epochs
    "multistep": {"milestones": [5, 8], "gamma": 0.1},  # lr *= gamma at each milestone epoch
    "exponential": {"gamma": 0.9},  # lr *= gamma every epoch
    "cosine": {"eta_min": 0.0},  # cosine from lr down to eta_min over all epochs
    "plateau": {"factor": 0.1, "patience": 2},  # lr *= factor when val_loss stalls
}


@dataclass(frozen=True)
class SchedulerConfig:
    name: str
    settings: dict[str, Any]


@dataclass(frozen=True)
class ModelConfig:
    optimizer: str  # one of OPTIMIZERS
    lr: float
    momentum: float  # used by sgd and rmsprop
    weight_decay: float
    scheduler: SchedulerConfig
    epochs: int
    batch_size: int
    shift: int  # augmentation: random translation of each training image by up to this many pixels

    def flat(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "scheduler"}
        out["scheduler"] = self.scheduler.name
        out.update({f"scheduler.{k}": v for k, v in self.scheduler.settings.items()})
        return out


@dataclass(frozen=True)
class VariantConfig:
    crop: int  # RandomCrop(crop) of the 28x28 test image, then Resize back to 28


@dataclass(frozen=True)
class DataConfig:
    dataset: str
    mirror: str | None  # a folder holding the four IDX files, gzipped or not
    val_size: int  # images held out of train for validation


@dataclass(frozen=True)
class Config:
    seed: int
    device: str
    data: DataConfig
    variants: dict[str, VariantConfig]
    models: tuple[str, ...]  # the models the pipeline trains
    amp: bool  # mixed precision on CUDA
    deterministic: bool
    resume: bool  # continue from the last epoch checkpoint after a kill
    model_configs: dict[str, ModelConfig]
    dpi: int  # resolution of the visualize stage's figures

    def model(self, name: str) -> ModelConfig:
        return self.model_configs[name]

    def run_params(self, name: str) -> dict[str, Any]:
        """What an MLflow run of one model records, under names that mean the same for every
        model (one column per setting in the UI): its settings, the data and the seed. Where
        they sit in params.yaml (train.<model>.lr) is in the run's params.yaml artifact."""
        return {
            "model": name,
            **self.model(name).flat(),
            "dataset": self.data.dataset,
            "val_size": self.data.val_size,
            "seed": self.seed,
            "device": self.device,
            "amp": self.amp,
            "deterministic": self.deterministic,
        }


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(raw)


def parse_config(raw: Any) -> Config:
    from mnistflow.models import model_names  # the registry decides which model sections exist

    top = _section(raw, "", ["seed", "device", "data", "preprocess", "train", "visualize"])
    vis = _section(top["visualize"], "visualize", ["dpi"])
    data = _section(top["data"], "data", ["dataset", "mirror", "val_size"])
    pre = _section(top["preprocess"], "preprocess", ["variants"])
    registered = model_names()
    train = _section(top["train"], "train", ["models", "amp", "deterministic", "resume"], optional=registered)

    variants_raw = _mapping(pre["variants"] or {}, "preprocess.variants")
    variants = {}
    for name, spec in variants_raw.items():
        key = f"preprocess.variants.{name}"
        if name in ("train", "val", "test"):
            raise ConfigError(f"{key}: the name {name!r} is taken by a data split; choose another")
        crop = _int(_section(spec, key, ["crop"])["crop"], f"{key}.crop", 1)
        if crop > IMAGE_SIZE:
            raise ConfigError(f"{key}.crop: {crop} is larger than the {IMAGE_SIZE}x{IMAGE_SIZE} image; "
                              f"allowed 1..{IMAGE_SIZE}")
        variants[str(name)] = VariantConfig(crop=crop)

    models = train["models"]
    if not isinstance(models, list) or not models:
        raise ConfigError(f"train.models: {models!r} must be a non-empty list of models; known: {_known(registered)}")
    for name in models:
        _choice(name, "train.models", registered)
        if name not in train:
            raise ConfigError(f"train.models lists {name!r} but there is no train.{name} section")
    if len(set(models)) != len(models):
        raise ConfigError(f"train.models: {models!r} names a model twice")

    mirror = data["mirror"]
    if mirror is not None and not isinstance(mirror, str):
        raise ConfigError(f"data.mirror: {mirror!r} must be a folder path or null")

    return Config(
        seed=_int(top["seed"], "seed", 0),
        device=_choice(top["device"], "device", DEVICES),
        data=DataConfig(
            dataset=_choice(data["dataset"], "data.dataset", DATASETS),
            mirror=mirror,
            val_size=_int(data["val_size"], "data.val_size", 1),
        ),
        variants=variants,
        models=tuple(models),
        amp=_bool(train["amp"], "train.amp"),
        deterministic=_bool(train["deterministic"], "train.deterministic"),
        resume=_bool(train["resume"], "train.resume"),
        model_configs={name: _model(train[name], f"train.{name}") for name in registered if name in train},
        dpi=_int(vis["dpi"], "visualize.dpi", 20),
    )


def _model(raw: Any, key: str) -> ModelConfig:
    names = ["optimizer", "lr", "momentum", "weight_decay", "scheduler", "epochs", "batch_size", "shift"]
    sec = _section(raw, key, names)
    return ModelConfig(
        optimizer=_choice(sec["optimizer"], f"{key}.optimizer", OPTIMIZERS),
        lr=_float(sec["lr"], f"{key}.lr", 0.0, strict=True),
        momentum=_float(sec["momentum"], f"{key}.momentum", 0.0, below=1.0),
        weight_decay=_float(sec["weight_decay"], f"{key}.weight_decay", 0.0),
        scheduler=_scheduler(sec["scheduler"], f"{key}.scheduler"),
        epochs=_int(sec["epochs"], f"{key}.epochs", 1),
        batch_size=_int(sec["batch_size"], f"{key}.batch_size", 1),
        shift=_shift(sec["shift"], f"{key}.shift"),
    )


def _shift(value: Any, key: str) -> int:
    shift = _int(value, key, 0)
    if shift >= IMAGE_SIZE // 2:
        raise ConfigError(f"{key}: {shift} would move the image out of its {IMAGE_SIZE}x{IMAGE_SIZE} frame; "
                          f"allowed 0..{IMAGE_SIZE // 2 - 1}")
    return shift


def _scheduler(raw: Any, key: str) -> SchedulerConfig:
    raw = _mapping(raw, key)
    if "name" not in raw:
        raise ConfigError(f"{key}.name is missing; allowed: {_known(SCHEDULERS)}")
    name = _choice(raw["name"], f"{key}.name", SCHEDULERS)
    defaults = SCHEDULERS[name]
    settings = dict(defaults)
    for k, v in raw.items():
        if k == "name":
            continue
        if k not in defaults:
            takes = ", ".join(defaults) or "no settings"
            raise ConfigError(f"{key}.{k} does not apply to scheduler {name!r} (it takes: {takes})")
        settings[k] = v
    for k, v in settings.items():
        sub = f"{key}.{k}"
        if k == "gamma":
            settings[k] = _float(v, sub, 0.0, strict=True, below=1.0, inclusive_below=True)
        elif k == "factor":
            settings[k] = _float(v, sub, 0.0, strict=True, below=1.0)
        elif k == "eta_min":
            settings[k] = _float(v, sub, 0.0)
        elif k == "patience":
            settings[k] = _int(v, sub, 0)
        elif k == "step_size":
            settings[k] = _int(v, sub, 1)
        elif k == "milestones":
            if not isinstance(v, list) or not v:
                raise ConfigError(f"{sub}: {v!r} must be a non-empty list of epochs")
            ms = [_int(m, sub, 1) for m in v]
            if ms != sorted(set(ms)):
                raise ConfigError(f"{sub}: {v!r} must be strictly increasing")
            settings[k] = ms
    return SchedulerConfig(name=name, settings=settings)


# --- small validators: each names the key, the bad value and what is allowed ---

def _known(options) -> str:
    return ", ".join(str(o) for o in options)


def _mapping(raw: Any, key: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key or 'params.yaml'}: expected a mapping of keys, got {raw!r}")
    return raw


def _section(raw: Any, key: str, required: list[str], optional=()) -> dict:
    raw = _mapping(raw, key)
    allowed = list(required) + list(optional)
    for k in raw:
        if k not in allowed:
            full = f"{key}.{k}" if key else str(k)
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f"; did you mean {(key + '.' if key else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {full!r}{hint} (allowed here: {_known(allowed)})")
    for k in required:
        if k not in raw:
            raise ConfigError(f"missing key {(key + '.' if key else '') + k!r}")
    return raw


def _choice(value: Any, key: str, options) -> str:
    if value not in options:
        close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}: unknown value {value!r}{hint} (allowed: {_known(options)})")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} must be true or false")
    return value


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: {value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ConfigError(f"{key}: {value} is out of range; it must be >= {minimum}")
    return value


def _float(value: Any, key: str, minimum: float, strict: bool = False,
           below: float | None = None, inclusive_below: bool = False) -> float:
    lo = f"> {minimum}" if strict else f">= {minimum}"
    hi = "" if below is None else f" and {'<=' if inclusive_below else '<'} {below}"
    if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: {value!r} must be a number {lo}{hi}")
    value = float(value)
    bad_lo = value <= minimum if strict else value < minimum
    bad_hi = below is not None and (value > below if inclusive_below else value >= below)
    if bad_lo or bad_hi or value != value:
        raise ConfigError(f"{key}: {value} is out of range; it must be {lo}{hi}")
    return value


def check_params(path: str = "params.yaml", stamp: str | None = None) -> None:
    """Validate params.yaml; on success write `stamp` (always the same bytes) if given."""
    load_config(path)
    if stamp:
        write_bytes(stamp, b"params.yaml is valid\n")


if __name__ == "__main__":  # python -m mnistflow.config [params.yaml [STAMP]]: exit 2 on a bad value
    import sys

    from mnistflow.errors import run_stage

    run_stage(lambda: check_params(*sys.argv[1:3]))
