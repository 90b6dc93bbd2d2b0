"""Hyperparameter search: Optuna asks, every trial is a DVC experiment, MLflow shows the study.

    mnistflow tune [--model M] [--trials N] [--jobs J] [--study S] [-S key=value ...]
    mnistflow tune --apply-best [--study S]

params.yaml's `tune` section says what to search (docs/search.md); the flags override it, and
`-S key=value` sets a param alike for every trial. Optuna's ask/tell loop runs over DVC's queue:
J trials are asked, queued as DVC experiments named <study>-<trial number> (the model's train
and evaluate stages: the report page is drawn once, by --apply-best) and run on J queue
workers; each is told the validation accuracy of the weights it kept (DVC's run-cache answers a
trial whose params an earlier experiment already ran, without training). The study lives in an
Optuna storage (`tune.storage`; by default mlruns/optuna.db), so tune processes on several
clones fill one study, and a killed one resumes it: a trial it left RUNNING whose experiment
finished is told its value, any other is failed and asked again with the same params. In MLflow
the study is a parent run (`study · <study>`), each trial's training run its child.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import zlib
from pathlib import Path

import yaml

from mnistflow import tracking
from mnistflow.cli import Parser
from mnistflow.core.config import Choice, Config, FloatRange, load_config, parse_config
from mnistflow.core.errors import ConfigError, MnistflowError, run_stage
from mnistflow.core.io import atomic_path, write_bytes
from mnistflow.models import model_names
from mnistflow.tools.compare import drain, dvc, model_stages, queue_states, run_queue
from mnistflow.tracking import studies
from mnistflow.tracking.store import sqlite_path
from mnistflow.tools.exps import exp_show
from mnistflow.tools.server import STUDY_STORAGE

REPORTS = Path("reports/tune")  # per study: its table and Optuna's figures (not in git)
STUDY = Path("reports/study.json")  # the last study's table (in git), which the report page draws
ATTEMPTS = 2  # a trial whose queue task fails is queued once more (DVC's parallel queue fails now and then)


def settings(argv: list[str] | None, prog: str) -> tuple[Config, str, bool, float]:
    """params.yaml with the flags applied to its tune section, validated as a whole."""
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=model_names(), help="the model to tune (tune.model)")
    parser.add_argument("--trials", type=int, help="completed trials the study should hold (tune.trials)")
    parser.add_argument("--jobs", type=int, help="DVC queue workers: trials at a time (tune.jobs)")
    parser.add_argument("--study", help="the study's name (default: <dataset>-<model>)")
    parser.add_argument("-S", dest="set", action="append", default=[], metavar="KEY=VALUE",
                        help="a param every trial sets alike (dotted, as dvc exp run -S takes it)")
    parser.add_argument("--apply-best", action="store_true",
                        help="make the study's best trial the workspace (dvc exp apply): `dvc repro` then runs nothing")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds a batch of trials may take")
    args = parser.parse_args(argv)
    raw = yaml.safe_load(Path("params.yaml").read_text())
    tune = (raw or {}).get("tune")
    if not isinstance(tune, dict):
        raise ConfigError("params.yaml has no tune section: docs/search.md shows one")
    if args.model and args.model != tune.get("model"):  # the same space over the other model's keys
        old, new = f"train.{tune.get('model')}.", f"train.{args.model}."
        for section in ("space", "set"):
            tune[section] = {new + k[len(old):] if k.startswith(old) else k: v for k, v in (tune.get(section) or {}).items()}
        tune["model"] = args.model
    for key, flag in (("trials", args.trials), ("jobs", args.jobs)):
        if flag is not None:
            tune[key] = flag
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"-S {item!r}: expected KEY=VALUE (train.mlp.epochs=3)")
        tune.setdefault("set", {})[key] = yaml.safe_load(value)
    cfg = parse_config(raw, model_names())
    return cfg, args.study or f"{cfg.data.dataset}-{cfg.tune.model}", args.apply_best, args.timeout


def storage_url(cfg: Config) -> str:
    """Where the study lives: $MNISTFLOW_TUNE_STORAGE (a URL with a password stays out of
    params.yaml), else tune.storage, else an sqlite file beside a local MLflow store."""
    if url := os.environ.get(STUDY_STORAGE) or cfg.tune.storage:
        return url
    db = sqlite_path()
    if db is None:
        raise ConfigError(f"the MLflow store is a server ({tracking.tracking_uri()}): set {STUDY_STORAGE} (or "
                          "tune.storage) to the study storage every machine reaches; `mnistflow server start` prints it")
    return f"sqlite:///{db.parent / 'optuna.db'}"


def open_study(cfg: Config, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(cfg)
    # sqlite: two tune processes of one clone wait for each other's writes rather than fail
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(5):  # two processes making a new storage's tables at once: one fails, then finds them
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                                 if url.startswith("sqlite") else {"pool_pre_ping": True})
            break
        except SQLAlchemyError as exc:
            error = exc
            time.sleep(1 + attempt)
    else:
        shown = re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)  # never print a password
        raise MnistflowError(f"the study storage {shown} refused us or does not answer: "
                             f"{str(getattr(error, 'orig', None) or error).strip().splitlines()[0]}") from None
    try:
        return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    except optuna.exceptions.DuplicatedStudyError:  # another process created it at the same moment
        return optuna.load_study(study_name=name, storage=storage)


def sampler(cfg: Config, study: str, number: int):
    """The sampler for trial `number` of `study`: seeded from (tune.sampler.seed, the study's
    name, number), so a study draws the same params whichever process asks, two processes asking
    at once draw different ones, and another study explores afresh."""
    import optuna

    seed = (cfg.tune.sampler.seed * 100_003 + zlib.crc32(study.encode()) + number) % 2**32
    if cfg.tune.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # a running trial counts as a poor one


def suggest(trial, cfg: Config) -> dict:
    for key, dim in cfg.tune.space.items():
        if isinstance(dim, Choice):
            trial.suggest_categorical(key, dim.choices)
        elif isinstance(dim, FloatRange):
            trial.suggest_float(key, dim.low, dim.high, log=dim.log)
        else:
            trial.suggest_int(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return trial.params


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{Path.cwd()}"


def abandoned(trial) -> bool:
    """A RUNNING trial whose tune process, on this host and clone, is gone."""
    host, _, rest = trial.user_attrs.get("owner", "").partition(":")
    pid, _, repo = rest.partition(":")
    if host != socket.gethostname() or repo != str(Path.cwd()) or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def exp_name(study: str, number: int) -> str:
    return f"{study}-{number}"


def override(key: str, value) -> str:
    """key=value as `dvc exp run -S` (Hydra) reads it back as the same YAML value."""
    return f"{key}={json.dumps(value) if isinstance(value, (bool, str)) else value!r}"


def trial_args(cfg: Config, params: dict) -> list[str]:
    """A trial's `dvc exp run -S` arguments: the other models stay listed (the trial runs its
    model's stages alone, and theirs keep the baseline's entries in dvc.lock), so applying the
    best trial keeps the whole pipeline."""
    models = [] if cfg.tune.model in cfg.train.models else ["-S", f"train.models=[{','.join(cfg.train.models)},"
                                                                  f"{cfg.tune.model}]"]
    return models + [arg for key, value in {**cfg.tune.set, **params}.items() for arg in ("-S", override(key, value))]


def finished(names, cfg: Config) -> dict[str, tuple[float, str]]:
    """Each named experiment's objective and weights' md5: what its train stage wrote for the
    kept weights, read through DVC's public API from the experiment's outputs in the cache."""
    import dvc.api

    entries = {e["name"]: e for e in exp_show() if e["name"] in names}
    out = {}
    for name in names:
        if name not in entries:
            raise MnistflowError(f"no DVC experiment {name!r} of this commit (`dvc exp show`)")
        rev, outs = entries[name]["rev"], (entries[name].get("data") or {}).get("outs") or {}
        metrics = json.loads(dvc.api.read(f"reports/train/{cfg.tune.model}.json", rev=rev))
        out[name] = float(metrics[cfg.tune.objective]), outs[f"models/{cfg.tune.model}.pt"]["hash"]
    return out


def study_run(cfg: Config, study) -> str:
    t = cfg.tune
    return studies.study_run(cfg.data.dataset, study.study_name, {
        "model": t.model, "trials": t.trials, "jobs": t.jobs, "sampler": t.sampler.name, "sampler.seed": t.sampler.seed,
        "objective": t.objective, **{f"set.{k}": v for k, v in t.set.items()},
        **{f"space.{k}": describe(d) for k, d in t.space.items()}})


def describe(dim) -> str:
    if isinstance(dim, Choice):
        return "one of " + ", ".join(map(str, dim.choices))
    return f"{dim.type} [{dim.low:g}, {dim.high:g}]" + (" log" if dim.log else "")


def adopt(number: int, md5: str, parent: str, cfg: Config, study) -> None:
    if studies.adopt(cfg.data.dataset, md5, parent, study.study_name, number) is None:
        print(f"note: no MLflow run in {tracking.tracking_uri()} trained the weights of trial {number} "
              f"({exp_name(study.study_name, number)}): DVC restored them from its cache")


def recover(study, cfg: Config, parent: str) -> None:
    """The trials a killed tune process of this clone left RUNNING: told their value where their
    experiment finished, else failed and asked again with the same params."""
    from optuna.trial import TrialState

    stale = [t for t in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]) if abandoned(t)]
    if not stale:
        return
    states = queue_states({exp_name(study.study_name, t.number) for t in stale})
    if waiting := [name for name, state in states.items() if state in ("queued", "running")]:
        print(f"waiting for {', '.join(waiting)}, left in DVC's queue by a killed tune", flush=True)
        drain(waiting, cfg.tune.jobs)
        states = queue_states(states)
    results = finished([name for name, state in states.items() if state == "success"], cfg)
    for t in stale:
        name = exp_name(study.study_name, t.number)
        if name in results:
            study.tell(t.number, results[name][0])
            adopt(t.number, results[name][1], parent, cfg, study)
            print(f"trial {t.number}: left running by a killed tune; its experiment {name} finished: kept")
            continue
        dvc("exp", "remove", name, check=False)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        print(f"trial {t.number}: left running by a killed tune: failed, and asked again with the same params")


def counts(study) -> tuple[int, int]:
    """(completed, running or waiting) trials of the study, whoever runs them."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = sum(t.state == TrialState.COMPLETE for t in trials)
    return done, sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


def ask(study, cfg: Config):
    """A trial, or None when the study already holds (or is running) tune.trials of them."""
    from optuna.trial import TrialState

    done, busy = counts(study)
    if done + busy >= cfg.tune.trials:
        return None
    trial = study.ask()
    trial.set_user_attr("owner", owner())
    study.sampler = sampler(cfg, study.study_name, trial.number)
    suggest(trial, cfg)
    ahead = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number
             and t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)]
    if len(ahead) >= cfg.tune.trials:  # another process asked the last one at the same moment
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


def search(cfg: Config, study, parent: str, timeout: float) -> None:
    from optuna.trial import TrialState

    failures = 0
    while True:
        trials = [t for t in (ask(study, cfg) for _ in range(cfg.tune.jobs)) if t is not None]
        if not trials:
            return
        names = {exp_name(study.study_name, t.number): t for t in trials}
        todo = {name: trial_args(cfg, t.params) for name, t in names.items()}
        for attempt in range(ATTEMPTS):
            failed = run_queue(todo, cfg.tune.jobs, timeout, model_stages(cfg.tune.model))
            todo = {name: todo[name] for name in failed}
            if not todo:
                break
            print(f"retrying {', '.join(todo)} (failed in DVC's queue)", flush=True)
        results = finished([name for name in names if name not in todo], cfg)
        for name, t in names.items():
            if name in todo:
                failures += 1
                study.tell(t, state=TrialState.FAIL)
                print(f"trial {t.number} failed: `dvc queue logs {name}` says why", flush=True)
                continue
            value, md5 = results[name]
            study.tell(t, value)
            adopt(t.number, md5, parent, cfg, study)
            print(f"trial {t.number} ({name}): {cfg.tune.objective} {value:.4f}  {t.params}", flush=True)
        if failures >= cfg.tune.trials:
            raise MnistflowError(f"{failures} trials failed: the study stops (`dvc queue logs <name>` says why)")


def table(cfg: Config, study) -> dict:
    """The study as the report page and reports/tune/<study>/study.json show it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    return {"study": study.study_name, "dataset": cfg.data.dataset, "model": cfg.tune.model,
               "objective": cfg.tune.objective, "space": {k: describe(d) for k, d in cfg.tune.space.items()},
               "best": best and {"trial": best.number, "dvc_exp": exp_name(study.study_name, best.number),
                                 "value": best.value, "params": best.params},
               "trials": [{"trial": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                           "dvc_exp": exp_name(study.study_name, t.number)} for t in trials]}


def write_table(path: Path, summary: dict) -> None:
    write_bytes(path, (json.dumps(summary, indent=1) + "\n").encode())


def summarize(cfg: Config, study, parent: str) -> dict:
    """The study's table and figures: reports/tune/<study>/, reports/study.json (in git: the
    report page draws it), and the study's run in MLflow."""
    summary = table(cfg, study)
    out = REPORTS / study.study_name
    out.mkdir(parents=True, exist_ok=True)
    for path in (out / "study.json", STUDY):
        write_table(path, summary)
    complete, best = [t for t in summary["trials"] if t["state"] == "COMPLETE"], summary["best"]
    from mnistflow.tracking import ui

    # The view's columns: each searched param as a training run records it (train.mlp.lr -> lr).
    prefix = f"train.{cfg.tune.model}."
    summary["view"] = ui.install_study(tracking.client(), cfg.data.dataset, study.study_name, parent,
                                       [k.removeprefix(prefix) for k in cfg.tune.space])
    figures = draw(study, out) if len(complete) >= 2 else []
    metrics = {f"best_{cfg.tune.objective}": best["value"], "completed_trials": len(complete)} if best else {}
    tags = {"best_trial": best["trial"], "best_dvc_exp": best["dvc_exp"],
            **{f"best.{k}": v for k, v in best["params"].items()}} if best else {}
    studies.record(parent, metrics, tags, [out / "study.json", *figures])
    return summary


def draw(study, out: Path) -> list[Path]:
    """Optuna's figures, drawn offline with matplotlib."""
    import warnings

    import matplotlib
    from optuna.exceptions import ExperimentalWarning

    # Optuna's matplotlib figures are "experimental", its importances warn when every trial scores
    # alike, matplotlib logs that choices look numeric: none of it is news for a picture.
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Target and region quantiles", category=UserWarning)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as vis

    figures = {"history": lambda: vis.plot_optimization_history(study),
               "slice": lambda: vis.plot_slice(study)}
    if len(study.best_trial.params) > 1:
        figures["importances"] = lambda: vis.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    paths = []
    for name, plot in figures.items():
        ax = plot()
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        path = out / f"{name}.png"
        fig.set_size_inches(max(fig.get_size_inches()[0], 7), 4.5)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def apply_best(cfg: Config, study) -> None:
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        raise MnistflowError(f"study {study.study_name!r} has no completed trial yet: run `mnistflow tune` first")
    best = max(complete, key=lambda t: (t.value, -t.number))
    name = exp_name(study.study_name, best.number)
    if not any(e["name"] == name for e in exp_show()):
        raise MnistflowError(f"the best trial's experiment {name!r} is not in this clone (`dvc exp pull` it from the "
                             "clone that ran it)")
    dvc("exp", "apply", name)
    write_table(STUDY, table(cfg, study))
    # A trial trains and evaluates its model, and leaves the report page to this repro, which
    # draws it once, with the study's table (reports/study.json, which the trial predates): so
    # that `dvc repro` then runs nothing.
    ran = re.findall(r"Running stage '([^']+)'", dvc("repro").stdout)
    print(f"applied {name} ({cfg.tune.objective} {best.value:.4f}, {best.params})"
          + (f"; ran {', '.join(ran)}" if ran else "") + ": `dvc repro` runs nothing now; commit params.yaml, "
          "dvc.lock and reports/study.json to make it the baseline")


def main(argv: list[str] | None = None, prog: str = "mnistflow tune") -> None:
    cfg, name, best, timeout = settings(argv, prog)
    study = open_study(cfg, name)
    if best:
        apply_best(cfg, study)
        return
    if cfg.tune.jobs * cfg.numerics.threads > (os.cpu_count() or 1):
        print(f"note: {cfg.tune.jobs} trials at a time x numerics.threads {cfg.numerics.threads} is more threads than "
              f"this machine's {os.cpu_count()} cores: trials slow each other down (docs/search.md)", flush=True)
    parent = study_run(cfg, study)
    recover(study, cfg, parent)
    started = time.monotonic()
    search(cfg, study, parent, timeout)
    summary = summarize(cfg, study, parent)
    done, busy = counts(study)
    print(f"study {name}: {done} of {cfg.tune.trials} trials complete"
          + (f", {busy} still running elsewhere" if busy else "") + f" ({time.monotonic() - started:.0f} s here)")
    if summary["best"]:
        b = summary["best"]
        print(f"best: trial {b['trial']} ({b['dvc_exp']}), {cfg.tune.objective} {b['value']:.4f}, {b['params']}")
        print(f"`mnistflow tune --apply-best --study {name}` makes it the workspace; {REPORTS / name}/ holds the figures")
    print(f"in MLflow (`make ui`): {summary['view']}")


if __name__ == "__main__":
    run_stage(main)
