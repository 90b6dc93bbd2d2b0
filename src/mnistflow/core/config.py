"""params.yaml -> a validated, read-only config that mirrors the file (`cfg.visualize.dpi`).

pydantic checks types and ranges; `validation.explain` says each failure as the user needs it
(the dotted key, the bad value, what is allowed, "did you mean" for a typo), raised as
`ConfigError`.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Sequence, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, \
    create_model, model_validator

from mnistflow.data.datasets import DATASETS
from mnistflow.core.errors import ConfigError
from mnistflow.core.validation import explain

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


class EarlyStop(Section):
    """Stop once validation accuracy has not gained `min_delta` over its best for `patience`
    epochs, keeping the best epoch's weights; patience 0: off (every epoch runs, the last kept)."""
    patience: int = Field(0, ge=0)
    min_delta: Number = Field(0.0, ge=0.0, lt=1.0)


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
    early_stop: EarlyStop = EarlyStop()

    def flat(self) -> dict[str, Any]:
        return {**self.model_dump(exclude={"scheduler", "early_stop"}), "scheduler": self.scheduler.name,
                **{f"scheduler.{k}": v for k, v in self.scheduler.settings.items()},
                **{f"early_stop.{k}": v for k, v in self.early_stop.model_dump().items()}}


class VariantConfig(Section):  # RandomCrop(crop) of each test image, then Resize back to its size
    crop: int = Field(ge=1)


Shape = tuple[Annotated[int, Field(ge=1, le=4096)], ...]


class DataConfig(Section):
    dataset: Literal[(*DATASETS, "folder")]  # type: ignore[valid-type]
    mirror: str | None  # a folder holding the dataset's files, tried first
    verify: bool  # check the real dataset's checksums; false: other data in the same format
    # images held out of train for validation: a share of them (below 1), or a count (1 or more)
    val_size: Annotated[Number, Field(gt=0), _unless(lambda v: v >= 1 and v != int(v), lambda v: (
        f"{v:g} must be a share of the training images below 1 (0.1) or a whole count of them (5000)"))]
    # dataset folder (mnistflow.data.folder): your images, brought to `shape`, and the share
    # of them held out for test where the folder has no train/ and test/
    path: str | None = None
    shape: Shape | None = Field(None, strict=False)  # channels (1 or 3), height, width
    test_size: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _folder_keys(self) -> DataConfig:
        if self.dataset != "folder":
            for key in ("path", "shape"):
                if getattr(self, key) is not None:
                    raise ValueError(f"data.{key} is for dataset 'folder' (your images); "
                                     f"{self.dataset} has its own: set it to null")
            return self
        if self.path is None or self.shape is None:
            missing = "data.path" if self.path is None else "data.shape"
            raise ValueError(f"dataset 'folder' needs {missing}: data.path the folder of class subfolders, "
                             f"data.shape [channels, height, width] the images are brought to, e.g. [3, 32, 32]")
        if len(self.shape) != 3 or self.shape[0] not in (1, 3):
            raise ValueError(f"data.shape: {list(self.shape)} must be [channels, height, width] with 1 (grayscale) "
                             f"or 3 (RGB) channels")
        if self.mirror is not None:
            raise ValueError("data.mirror is for the named datasets; dataset 'folder' reads data.path: set it to null")
        return self

    def val_count(self, n_train: int, of: str = "") -> int:
        """How many of `n_train` training images `val_size` holds out (a share of them, rounded);
        ConfigError, naming the key, unless at least 1 is held out and 1 left to train on."""
        share = self.val_size < 1
        count = round(self.val_size * n_train) if share else int(self.val_size)
        if not 1 <= count < n_train:
            what = f"the {n_train} training images{' of ' + of if of else ''}"
            raise ConfigError(f"data.val_size: {self.val_size:g} of {what} is {count}: it must hold out at least 1 "
                              "and leave at least 1 to train on" if share
                              else f"data.val_size: {count} must be smaller than {what}")
        return count

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """channels, height, width of every image the pipeline reads."""
        return tuple(self.shape) if self.dataset == "folder" else DATASETS[self.dataset].shape


class PreprocessConfig(Section):
    variants: Annotated[dict[str, VariantConfig], _unless(lambda vs: set(vs) & set(SPLITS), lambda vs: (
        f"the name {sorted(set(vs) & set(SPLITS))[0]!r} is taken by a data split; choose another"))]


ONCE = _unless(lambda ms: len(set(ms)) != len(ms), lambda ms: f"{list(ms)!r} names a model twice")


class TrainConfig(Section):
    """The fixed keys; `_config_class` adds an optional `ModelConfig` per registered model."""
    # the models the pipeline trains, from a YAML list (strict mode would take only a tuple)
    models: Annotated[tuple[str, ...], ONCE] = Field(min_length=1, strict=False)
    amp: bool  # bf16 autocast where the device has bf16 units (device.uses_bf16)
    deterministic: bool
    resume: bool  # continue from the last epoch checkpoint after a kill
    system_metrics: bool = True  # CPU, memory and GPU use sampled into each training run (no output changes)
    nproc: int = Field(1, ge=1, le=1024)  # data-parallel processes under torchrun (1: none)


class NumericsConfig(Section):
    """How the CPU computes (mnistflow.core.numerics): portable, the same bytes on every x86-64 CPU with
    AVX2 and FMA; or fast, this machine's fastest kernels and machine-specific results."""
    mode: Literal["portable", "fast"]
    threads: int = Field(ge=1, le=1024)  # CPU threads per stage, shared by train.nproc processes


class VisualizeConfig(Section):
    dpi: int = Field(ge=20)  # resolution of the visualize stage's figures


class FloatRange(Section):  # a number from [low, high], evenly or (log: true) on a log scale
    type: Literal["float"]
    low: Number
    high: Number
    log: bool = False


class IntRange(Section):  # a whole number from low, low + step, ..., high
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False


class Choice(Section):  # one of the values listed
    type: Literal["choice"]
    choices: Annotated[list[Any], _unless(lambda cs: any(isinstance(c, (list, dict)) or c is None for c in cs), lambda cs: (
        f"{cs!r}: each choice must be one value (a number, true/false or text)"))] = Field(min_length=1)


Dimension = Annotated[Union[FloatRange, IntRange, Choice], Field(discriminator="type")]


class SamplerConfig(Section):
    name: Literal["tpe", "random"]
    seed: int = Field(0, ge=0)


class TuneConfig(Section):
    """The hyperparameter search (mnistflow.tools.tune): each trial a DVC experiment."""
    model: str
    trials: int = Field(ge=1)
    jobs: int = Field(1, ge=1, le=64)  # DVC queue workers: trials at a time
    sampler: SamplerConfig
    # what a trial is judged on: its kept weights' validation accuracy (never a test set)
    objective: Annotated[str, _unless(lambda o: o.startswith("test"), lambda o: (
        f"{o!r} is measured on a test set, which a search must never see: use val_acc")),
        _unless(lambda o: o != "val_acc", lambda o: f"{o!r} is not a validation metric; use val_acc")] = "val_acc"
    # where the study lives (an Optuna storage URL); null: beside the MLflow store (sqlite)
    storage: str | None = None
    # each key a param's dotted path (train.mlp.lr), each value the range or choices it takes
    space: dict[str, Dimension] = Field(min_length=1)
    # params every trial sets alike (dotted path -> value), e.g. early stopping
    set: dict[str, Union[bool, int, float, str]] = {}


class Config(Section):
    seed: int = Field(ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"]
    numerics: NumericsConfig
    data: DataConfig
    preprocess: PreprocessConfig
    train: TrainConfig
    visualize: VisualizeConfig
    tune: TuneConfig | None = None

    @model_validator(mode="after")
    def _fits_the_data(self) -> Config:
        _, height, width = self.data.image_shape
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
        if self.tune is not None:
            self._tunable()
        return self

    def _tunable(self) -> None:
        """Every key of tune.space a pipeline param, and every value it may take valid there."""
        tune = self.tune
        if getattr(self.train, tune.model, None) is None:
            raise ValueError(f"tune.model: {tune.model!r} has no train.{tune.model} section")
        raw = self.model_dump(exclude={"tune"})
        for key, dim in tune.space.items():
            if key.split(".")[0] == "tune" or key == "train.models":
                raise ValueError(f"tune.space.{key}: not a param a trial can vary")
            if not isinstance(dim, Choice) and dim.low >= dim.high:
                raise ValueError(f"tune.space.{key}: the range [{dim.low:g}, {dim.high:g}] is empty or inverted; "
                                 "low must be below high")
            if not isinstance(dim, Choice) and dim.log and dim.low <= 0:
                raise ValueError(f"tune.space.{key}: a log range needs low > 0 (it is {dim.low:g})")
            values = dim.choices if isinstance(dim, Choice) else [dim.low, dim.high]
            for value in values:
                self._check_setting(raw, key, value, f"tune.space.{key}")
        for key, value in tune.set.items():
            if key in tune.space:
                raise ValueError(f"tune.set.{key}: also in tune.space; a param is searched or set, not both")
            self._check_setting(raw, key, value, f"tune.set.{key}")

    @staticmethod
    def _check_setting(raw: dict, key: str, value: Any, where: str) -> None:
        """`key` (dotted) is a leaf of params.yaml and `value` valid for it, or ValueError naming `where`."""
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], dict):
            raise ValueError(f"{where}: {key!r} is not a param in params.yaml")
        node[leaf], old = value, node[leaf]
        try:
            parse_config(raw)
        except ConfigError as exc:  # its words, about `where` rather than the key
            said = str(exc)
            raise ValueError(f"{where}:{said[len(key) + 1:]}" if said.startswith(f"{key}:")
                             else f"{where}: {value!r} is not a valid {key}: {said}") from None
        finally:
            node[leaf] = old

    def model(self, name: str) -> ModelConfig:
        if not isinstance(section := getattr(self.train, name, None), ModelConfig):
            raise ConfigError(f"no train.{name} section in params.yaml (models: {', '.join(self.train.models)})")
        return section

    def run_params(self, name: str) -> dict[str, Any]:
        """What an MLflow run of one model records, under names that mean the same for every
        model (one column per setting in the UI): its settings, the data and the seed. Where
        they sit in params.yaml (train.<model>.lr) is in the run's params.yaml artifact."""
        return {"model": name, **self.model(name).flat(), "dataset": self.data.dataset, "val_size": self.data.val_size,
                "seed": self.seed, "device": self.device, "amp": self.train.amp, "deterministic": self.train.deterministic,
                "numerics": self.numerics.mode}


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
        raise ConfigError(explain(cls, exc)) from None

