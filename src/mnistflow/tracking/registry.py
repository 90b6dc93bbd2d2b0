"""The registered models: one per dataset and model, the served form each version holds, and
its aliases: `candidate` the newest version, `champion` the best test accuracy so far, each
version tagged with why it got its alias."""
from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from mnistflow.tracking.store import client, errors, mlflow_module, sqlite_path

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CHAMPION, CANDIDATE = "champion", "candidate"


# What the registered model's page says of its aliases.
ALIAS_RULE = (f"`{CANDIDATE}` is the newest version; `{CHAMPION}` the version with the best test accuracy so far. "
              "Each version's tags say why it got its alias.")


def model_name(dataset_name: str, model: str) -> str:
    """The logged and registered model's name: one registered model per dataset and model."""
    return f"{dataset_name}-{model}"


def log_model_args(model: torch.nn.Module, mean: tuple[float, ...], std: tuple[float, ...], classes: list[str],
                   example: torch.Tensor) -> dict:
    """What `Model.log` gets for the served form of `model` (on the CPU, in eval mode):
    raw uint8 pixels in, standardized inside, class probabilities and names out."""
    example = example.cpu().numpy()  # a batch of 2: torch.export fixes a size-1 batch dimension
    # Naming the requirements skips MLflow's inference of them, a fresh Python process that
    # imports torch again (seconds per model) and picks up unrelated imports such as tqdm.
    import mlflow.pytorch  # noqa: F401  (the train stage alone logs a model)

    from mnistflow.tracking import serving
    return {"flavor": serving, "pytorch_model": serving.RawPixelClassifier(model, mean, std).eval(),
            "classes": classes, "input_example": example, "signature": serving.signature(example.shape),
            "pip_requirements": mlflow_module().pytorch.get_default_pip_requirements(),
            "metadata": {"classes": classes, "mean": list(mean), "std": list(std),
                         "input": f"uint8 pixels 0-255, shape (N, {', '.join(map(str, example.shape[1:]))})"}}


def name_candidate(store, name: str, version: str, run_name: str) -> None:
    """The newest version is the candidate; the model's description states the rule."""
    store.set_registered_model_alias(name, CANDIDATE, version)
    store.set_model_version_tag(name, version, f"{CANDIDATE}_because", f"the newest version: logged by run {run_name}")
    store.update_registered_model(name, ALIAS_RULE)


def promote(name: str, run_id: str, test_acc: float) -> None:
    """Point `champion` at the version of `run_id` when its test accuracy beats the champion's."""
    store = client()
    versions = store.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        return
    version = max(versions, key=lambda v: int(v.version))
    with _registry_lock():  # parallel `dvc queue` workers must not both win
        try:
            champion = store.get_model_version_by_alias(name, CHAMPION)
            best = store.get_run(champion.run_id).data.metrics.get("test_acc", float("-inf"))
        except errors():
            champion, best = None, float("-inf")
        if champion is not None and champion.version == version.version:
            return
        if test_acc > best:
            store.set_registered_model_alias(name, CHAMPION, version.version)
            before = f"{best:.4f} of version {champion.version}" if champion else "no champion before"
            store.set_model_version_tag(name, version.version, f"{CHAMPION}_because",
                                        f"the best test accuracy so far: {test_acc:.4f} (over {before})")
            log.info("%s version %s (test_acc %.4f) is the new %s", name, version.version, test_acc, CHAMPION)
        else:
            log.info("%s stays at version %s (test_acc %.4f >= %.4f)", CHAMPION, champion.version, best, test_acc)


@contextmanager
def _registry_lock() -> Iterator[None]:
    db = sqlite_path()
    if db is None:  # a tracking server: no shared folder to lock in
        yield
        return
    with open(db.parent / ".registry.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
