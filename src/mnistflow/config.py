"""params.yaml -> a validated, read-only config that mirrors the file (`cfg.visualize.dpi`).

pydantic checks types and ranges; `_message` says each failure as the user needs it: the dotted
key, the bad value, what is allowed, "did you mean" for a typo. Raised as `ConfigError`.
"""
from __future__ import annotations

import difflib
import functools
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Callable, Literal, Sequence, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, \
    create_model, model_validator

from mnistflow.datasets import DATASETS
from mnistflow.errors import ConfigError

SPLITS = ("train", "val", "test")


def _number(value: Any) -> Any:
    """YAML 1.1 reads 1e-3 (no dot) as a string; a user writing it means a number."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _unless(bad: Callable[[Any], Any], why: Callable[[Any], str]) -> AfterValidator:
    """Refuse a value for which `bad` holds, saying `why(value)`."""
    def check(value):
        if bad(value):
            raise ValueError(why(value))
        return value
    return AfterValidator(check)


# Strict (below): an int is no bool, a bool no "yes"; a number may be written as an int.
Number = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Scheduler(Section):
    @property
    def settings(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name"})


class NoScheduler(Scheduler):
    name: Literal["none"]


class StepScheduler(Scheduler):  # lr *= gamma every step_size epochs
    name: Literal["step"]
    step_size: int = Field(5, ge=1)
    gamma: Number = Field(0.1, gt=0.0, le=1.0)


class MultiStepScheduler(Scheduler):  # lr *= gamma at each milestone epoch
    name: Literal["multistep"]
    milestones: Annotated[list[Annotated[int, Field(ge=1)]], _unless(
        lambda ms: ms != sorted(set(ms)), lambda ms: f"{ms!r} must be strictly increasing")] = Field([5, 8], min_length=1)
    gamma: Number = Field(0.1, gt=0.0, le=1.0)


class ExponentialScheduler(Scheduler):  # lr *= gamma every epoch
    name: Literal["exponential"]
    gamma: Number = Field(0.9, gt=0.0, le=1.0)


class CosineScheduler(Scheduler):  # cosine from lr down to eta_min over all epochs
    name: Literal["cosine"]
    eta_min: Number = Field(0.0, ge=0.0)


class PlateauScheduler(Scheduler):  # lr *= factor when val_loss stalls
    name: Literal["plateau"]
    factor: Number = Field(0.1, gt=0.0, lt=1.0)
    patience: int = Field(2, ge=0)


SchedulerConfig = Annotated[Union[NoScheduler, StepScheduler, MultiStepScheduler, ExponentialScheduler,
                                  CosineScheduler, PlateauScheduler], Field(discriminator="name")]


class ModelConfig(Section):
    optimizer: Literal["sgd", "adam", "adadelta", "adagrad", "rmsprop"]
    lr: Number = Field(gt=0.0)
    momentum: Number = Field(ge=0.0, lt=1.0)  # used by sgd and rmsprop
    weight_decay: Number = Field(ge=0.0)
    scheduler: SchedulerConfig
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    # augmentation: random translation of each training image by up to this many pixels
    shift: int = Field(ge=0)

    def flat(self) -> dict[str, Any]:
        return {**self.model_dump(exclude={"scheduler"}), "scheduler": self.scheduler.name,
                **{f"scheduler.{k}": v for k, v in self.scheduler.settings.items()}}


class VariantConfig(Section):  # RandomCrop(crop) of each test image, then Resize back to its size
    crop: int = Field(ge=1)


class DataConfig(Section):
    dataset: Literal[tuple(DATASETS)]  # type: ignore[valid-type]
    mirror: str | None  # a folder holding the dataset's files, tried first
    verify: bool  # check the real dataset's checksums; false: other data in the same format
    val_size: int = Field(ge=1)  # images held out of train for validation


class PreprocessConfig(Section):
    variants: Annotated[dict[str, VariantConfig], _unless(lambda vs: set(vs) & set(SPLITS), lambda vs: (
        f"the name {sorted(set(vs) & set(SPLITS))[0]!r} is taken by a data split; choose another"))]


ONCE = _unless(lambda ms: len(set(ms)) != len(ms), lambda ms: f"{list(ms)!r} names a model twice")


class TrainConfig(Section):
    """The fixed keys; `_config_class` adds an optional `ModelConfig` per registered model."""
    # the models the pipeline trains, from a YAML list (strict mode would take only a tuple)
    models: Annotated[tuple[str, ...], ONCE] = Field(min_length=1, strict=False)
    amp: bool  # mixed precision on CUDA
    deterministic: bool
    resume: bool  # continue from the last epoch checkpoint after a kill


class VisualizeConfig(Section):
    dpi: int = Field(ge=20)  # resolution of the visualize stage's figures


class Config(Section):
    seed: int = Field(ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"]
    data: DataConfig
    preprocess: PreprocessConfig
    train: TrainConfig
    visualize: VisualizeConfig

    @model_validator(mode="after")
    def _fits_the_data(self) -> Config:
        _, height, width = DATASETS[self.data.dataset].shape
        size = f"the {height}x{width} images of {self.data.dataset}"
        for name in self.train.models:
            if (model := getattr(self.train, name, None)) is None:
                raise ValueError(f"train.models lists {name!r} but there is no train.{name} section")
            if model.shift > min(height, width) // 2 - 1:
                raise ValueError(f"train.{name}.shift: {model.shift} is too large for {size}; "
                                 f"allowed 0..{min(height, width) // 2 - 1}")
        for name, variant in self.preprocess.variants.items():
            if variant.crop > min(height, width):
                raise ValueError(f"preprocess.variants.{name}.crop: {variant.crop} is larger than {size}; "
                                 f"allowed 1..{min(height, width)}")
        return self

    def model(self, name: str) -> ModelConfig:
        if not isinstance(section := getattr(self.train, name, None), ModelConfig):
            raise ConfigError(f"no train.{name} section in params.yaml (models: {', '.join(self.train.models)})")
        return section

    def run_params(self, name: str) -> dict[str, Any]:
        """What an MLflow run of one model records, under names that mean the same for every
        model (one column per setting in the UI): its settings, the data and the seed. Where
        they sit in params.yaml (train.<model>.lr) is in the run's params.yaml artifact."""
        return {"model": name, **self.model(name).flat(), "dataset": self.data.dataset, "val_size": self.data.val_size,
                "seed": self.seed, "device": self.device, "amp": self.train.amp, "deterministic": self.train.deterministic}


@functools.cache
def _config_class(models: tuple[str, ...]) -> type[Config]:
    """Config whose train section takes these model names (the registry's) and no others."""
    name = Literal[models] if models else str  # type: ignore[valid-type]
    train = create_model("TrainConfig", __base__=TrainConfig, **{m: (ModelConfig | None, None) for m in models},
                         models=(Annotated[tuple[name, ...], ONCE], Field(min_length=1, strict=False)))
    return create_model("Config", __base__=Config, train=(train, ...))


def load_config(path: str | Path = "params.yaml", models: Sequence[str] | None = None) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(raw, models)


def parse_config(raw: Any, models: Sequence[str] | None = None) -> Config:
    """`models`: the registry's names, which the train section may hold. Without them (a stage
    that trains nothing), the sections present are taken as given: check_params ran first."""
    if models is None:
        train = raw.get("train") if isinstance(raw, dict) else None
        models = [k for k in train if k not in TrainConfig.model_fields] if isinstance(train, dict) else []
    cls = _config_class(tuple(models))
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A typo also makes its key missing: where keys are unknown, name those alone.
        errors = [e for e in errors if e["type"] == "extra_forbidden"] or errors
        raise ConfigError("\n".join(dict.fromkeys(_message(cls, e) for e in errors))) from None


# --- from pydantic's error to the user's message ---

OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _walk(cls: type, loc: tuple) -> tuple[str, Any, type | None, str | None]:
    """loc -> (dotted key, the annotation there, the model holding the last key, the scheduler
    name passed on the way: pydantic puts a tagged union's tag in loc)."""
    keys: list[str] = []
    ann, owner, tag = cls, None, None
    for part in loc:
        if get_origin(ann) in (Union, UnionType):
            members = [m for m in get_args(ann) if m is not NoneType]
            if len(members) > 1:
                ann, tag = next(m for m in members if part in _options(m)), part
                continue
            ann = members[0]
        if isinstance(part, int):  # a list item: the list's key names it
            ann = get_args(ann)[0]
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            owner, field = ann, ann.model_fields.get(part)
            keys.append(part)
            ann = field and field.annotation
        else:  # a name under preprocess.variants
            keys.append(str(part))
            ann = get_args(ann)[1]
    return ".".join(keys), ann, owner, tag


def _options(ann: Any) -> list[str]:
    """The values a Literal allows (also inside tuple[...], or a scheduler's name)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return _options(ann.model_fields["name"].annotation)
    if get_origin(ann) is Literal:
        return [str(a) for a in get_args(ann)]
    return [o for a in get_args(ann) for o in _options(a)]


def _hint(value: Any, options: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(value), list(options), n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def _message(cls: type, error: dict) -> str:
    kind, loc, value, ctx = error["type"], error["loc"], error.get("input"), error.get("ctx", {})
    key, ann, owner, tag = _walk(cls, loc)
    parent, _, last = key.rpartition(".")
    if kind == "extra_forbidden":
        allowed = [f for f in (owner.model_fields if owner else []) if not (tag and f == "name")]
        if tag:
            return f"{key} does not apply to scheduler {tag!r} (it takes: {', '.join(allowed) or 'no settings'})"
        return f"unknown key {key!r}{_hint(last, allowed, parent + '.' if parent else '')} " \
               f"(allowed here: {', '.join(allowed)})"
    if kind in ("literal_error", "union_tag_invalid", "union_tag_not_found"):
        names = _options(ann)
        if kind == "union_tag_not_found":
            return f"{key}.name is missing; allowed: {', '.join(names)}"
        key, value = (f"{key}.name", ctx["tag"]) if kind == "union_tag_invalid" else (key, value)
        return f"{key}: unknown value {value!r}{_hint(value, names)} (allowed: {', '.join(names)})"
    if kind == "value_error":  # our validators' own words
        return f"{key}: {ctx['error']}" if key else str(ctx["error"])
    if kind == "missing":
        return f"missing key {key!r}"
    if kind in ("model_type", "dict_type"):
        return f"{key or 'params.yaml'}: expected a mapping of keys, got {value!r}"
    field = owner.model_fields.get(last) if owner else None
    bounds = " and ".join(f"{op} {getattr(m, k)}" for m in (field.metadata if field else [])
                          for k, op in OPS.items() if hasattr(m, k))
    bounds = bounds or " and ".join(f"{OPS[k]} {v}" for k, v in ctx.items() if k in OPS)  # a list item's
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"):
        return f"{key}: {float(value) if ann is float else value} is out of range; it must be {bounds}"
    must = {"bool": "true or false", "string": "text", "int": f"an integer {bounds}", "float": f"a number {bounds}",
            "too": "a non-empty list", "tuple": "a list", "list": "a list"}.get(kind.split("_")[0])
    return f"{key}: {value!r} must be {must}".rstrip() if must else f"{key}: {value!r}: {error['msg']}"

