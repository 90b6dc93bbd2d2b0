"""The registered models: one per dataset and model, the served form each version holds, and
its aliases: `candidate` the newest version, `champion` the best test accuracy of all versions, each
version tagged with why it got its alias."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mnistflow.tracking.store import client, errors, mlflow_module

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CHAMPION, CANDIDATE = "champion", "candidate"


# What the registered model's page says of its aliases.
ALIAS_RULE = (f"`{CANDIDATE}` is the newest version; `{CHAMPION}` the version with the best test accuracy of all "
              "(the earliest of a tie). Each version's tags say why it got its alias.")


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


def best_version(store, name: str):
    """(test accuracy, version) of the version whose run has the best test accuracy, the earliest
    version on a tie; None before any version was evaluated."""
    scored = [(acc, v) for v in store.search_model_versions(f"name = '{name}'")
              if (acc := store.get_run(v.run_id).data.metrics.get("test_acc")) is not None]
    return max(scored, key=lambda s: (s[0], -int(s[1].version)), default=None)


def promote(name: str, attempts: int = 20) -> None:
    """Point `champion` at the best version over every version evaluated so far. No lock and no
    order: each promoter recomputes the best from the store and checks again after it writes,
    so whichever writes last, the alias ends on the best (a stale writer's check sees the newer
    accuracies and corrects it). Two promoters setting the alias at the same moment can collide
    in the server's database (PostgreSQL: a unique key), on the alias or on the reason's tag: the
    one refused looks again."""
    store = client()
    for attempt in range(attempts):
        best = best_version(store, name)
        if best is None:
            return
        test_acc, version = best
        try:
            current = store.get_model_version_by_alias(name, CHAMPION).version
        except errors():
            current = None
        if current == version.version:
            return
        before = f"version {current}" if current else "no champion before"
        try:
            store.set_registered_model_alias(name, CHAMPION, version.version)
            store.set_model_version_tag(name, version.version, f"{CHAMPION}_because",
                                        f"the best test accuracy of all versions: {test_acc:.4f} (over {before})")
        except errors():
            if attempt == attempts - 1:
                raise
            continue
        log.info("%s version %s (test_acc %.4f) is the %s", name, version.version, test_acc, CHAMPION)
