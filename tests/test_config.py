import copy
from pathlib import Path

import pytest
import yaml

from mnistflow.core.config import StepScheduler, load_config, parse_config
from mnistflow.core.errors import ConfigError
from mnistflow.models import model_names

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())


def parse(raw):
    return parse_config(raw, model_names())


def with_change(path: str, value):
    raw = copy.deepcopy(PARAMS)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return raw


def test_the_project_params_are_valid():
    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml", model_names())
    assert cfg.train.models == ("mlp", "cnn", "lenet")
    assert cfg.data.dataset == "fashion_mnist"
    assert set(cfg.preprocess.variants) == {"crop22", "crop18"}
    # A run records what params.yaml's text says, read here with yaml alone (not the config under test).
    for model in PARAMS["train"]["models"]:
        raw, params = PARAMS["train"][model], cfg.run_params(model)
        expected = {**{k: v for k, v in raw.items() if k not in ("scheduler", "early_stop")},
                    "scheduler": raw["scheduler"]["name"], "early_stop.patience": raw["early_stop"]["patience"],
                    "model": model, "dataset": PARAMS["data"]["dataset"], "seed": PARAMS["seed"],
                    "val_size": PARAMS["data"]["val_size"], "numerics": PARAMS["numerics"]["mode"]}
        assert {k: params[k] for k in expected} == expected
    # One name means one thing for every model: the same keys whatever the model.
    assert len({tuple(sorted(cfg.run_params(m))) for m in cfg.train.models}) == 1


@pytest.mark.parametrize("path, value, message", [
    ("train.cnn.lrr", 0.1, "unknown key 'train.cnn.lrr'; did you mean 'train.cnn.lr'?"),
    ("datta", {}, "unknown key 'datta'; did you mean 'data'?"),
    ("train.cnn.lr", 0, "train.cnn.lr: 0.0 is out of range; it must be > 0.0"),
    ("train.cnn.lr", -0.1, "train.cnn.lr: -0.1 is out of range"),
    ("train.cnn.lr", "fast", "train.cnn.lr: 'fast' must be a number > 0.0"),
    ("train.mlp.epochs", 0, "train.mlp.epochs: 0 is out of range; it must be >= 1"),
    ("train.mlp.epochs", 2.5, "train.mlp.epochs: 2.5 must be an integer >= 1"),
    ("train.lenet.batch_size", 0, "train.lenet.batch_size: 0 is out of range; it must be >= 1"),
    ("train.cnn.optimizer", "adamw", "train.cnn.optimizer: unknown value 'adamw'; did you mean 'adam'?"),
    ("train.cnn.scheduler", {"name": "cosin"}, "train.cnn.scheduler.name: unknown value 'cosin'; did you mean 'cosine'?"),
    ("train.cnn.scheduler", {"name": "cosine", "step_size": 3},
     "train.cnn.scheduler.step_size does not apply to scheduler 'cosine' (it takes: eta_min)"),
    ("train.cnn.scheduler", {"name": "multistep", "milestones": [5, 3]}, "must be strictly increasing"),
    ("train.cnn.scheduler", {"name": "step", "gamma": 1.5}, "train.cnn.scheduler.gamma: 1.5 is out of range"),
    ("train.models", ["mlp", "resnet"], "train.models: unknown value 'resnet'"),
    ("train.models", [], "train.models: [] must be a non-empty list"),
    ("data.dataset", "cifar100", "data.dataset: unknown value 'cifar100'; did you mean 'cifar10'?"),
    ("data.val_size", 0, "data.val_size: 0.0 is out of range; it must be > 0"),
    ("data.val_size", 2.5, "data.val_size: 2.5 must be a share of the training images below 1 (0.1) or a whole count"),
    ("device", "gpu", "device: unknown value 'gpu'"),
    ("train.amp", "yes", "train.amp: 'yes' must be true or false"),
    ("train.nproc", 0, "train.nproc: 0 is out of range; it must be >= 1"),
    ("train.nproc", "2x", "train.nproc: '2x' must be an integer"),
    ("preprocess.variants", {"crop40": {"crop": 40}},
     "preprocess.variants.crop40.crop: 40 is larger than the 28x28 images of fashion_mnist; allowed 1..28"),
    ("train.cnn.shift", 14, "train.cnn.shift: 14 is too large for the 28x28 images of fashion_mnist; allowed 0..13"),
    ("preprocess.variants", {"test": {"crop": 20}}, "the name 'test' is taken by a data split"),
    ("train.cnn.momentum", KeyError, "missing key 'train.cnn.momentum'"),
    ("visualize.dpi", 0, "visualize.dpi: 0 is out of range; it must be >= 20"),
])
def test_bad_values_are_refused_with_the_key_and_what_is_allowed(path, value, message):
    with pytest.raises(ConfigError) as err:
        parse(with_change(path, value))
    assert message in str(err.value)


def test_a_listed_model_needs_its_section():
    raw = with_change("train.lenet", KeyError)
    with pytest.raises(ConfigError, match="train.models lists 'lenet' but there is no train.lenet section"):
        parse(raw)


def test_scheduler_defaults_fill_in_and_overrides_apply():
    cfg = parse(with_change("train.cnn.scheduler", {"name": "step", "step_size": 3}))
    assert cfg.model("cnn").scheduler.settings == {"step_size": 3, "gamma": StepScheduler.model_fields["gamma"].default}


def test_scientific_notation_without_a_dot_is_a_number():
    # YAML 1.1 reads 1e-3 as a string; a user writing it means a number.
    assert parse(with_change("train.cnn.lr", "1e-3")).model("cnn").lr == 0.001


def test_missing_or_broken_params_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("seed: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "params.yaml")


@pytest.mark.parametrize("path, value, message", [
    ("tune.space", {"train.mlp.lrr": {"type": "float", "low": 0.1, "high": 0.2}},
     "tune.space.train.mlp.lrr: 'train.mlp.lrr' is not a param in params.yaml"),
    ("tune.space", {"train.mlp.lr": {"type": "float", "low": 0.2, "high": 0.1}},
     "tune.space.train.mlp.lr: the range [0.2, 0.1] is empty or inverted; low must be below high"),
    ("tune.space", {"train.mlp.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}},
     "tune.space.train.mlp.lr: a log range needs low > 0 (it is 0)"),
    ("tune.space", {"train.mlp.batch_size": {"type": "choice", "choices": [64, "big"]}},
     "tune.space.train.mlp.batch_size: 'big' must be an integer >= 1"),
    ("tune.space", {"train.mlp.epochs": {"type": "float", "low": 1.5, "high": 3}},
     "tune.space.train.mlp.epochs: 1.5 must be an integer >= 1"),
    ("tune.space", {"train.mlp.lr": {"low": 1, "high": 2}},
     "tune.space.train.mlp.lr.type is missing; allowed: float, int, choice"),
    ("tune.space", {"train.models": {"type": "choice", "choices": ["mlp"]}},
     "tune.space.train.models: not a param a trial can vary"),
    ("tune.space", {"train.mlp.lr": {"type": "choice", "choices": [[0.1]]}},
     "tune.space.train.mlp.lr.choices: [[0.1]]: each choice must be one value (a number, true/false or text)"),
    ("tune.space", {}, "tune.space: {} must be a non-empty list"),
    ("tune.objective", "test_acc", "tune.objective: 'test_acc' is measured on a test set, which a search must never "
                                   "see: use val_acc"),
    ("tune.model", "vgg", "tune.model: 'vgg' has no train.vgg section"),
    ("tune.set", {"train.mlp.lr": 0.1}, "tune.set.train.mlp.lr: also in tune.space; a param is searched or set, not both"),
    ("tune.set", {"train.mlp.early_stop.patience": -1}, "tune.set.train.mlp.early_stop.patience: -1 is out of range; "
                                                         "it must be >= 0"),
    ("train.mlp.early_stop.min_delta", 1.5, "train.mlp.early_stop.min_delta: 1.5 is out of range; it must be >= 0.0 "
                                             "and < 1.0"),
])
def test_a_bad_search_is_refused_naming_the_key(path, value, message):
    """What `mnistflow tune` and check_params refuse before anything is queued."""
    with pytest.raises(ConfigError) as err:
        parse(with_change(path, value))
    assert str(err.value) == message
