"""A hyperparameter study in MLflow (mnistflow.tools.tune): a parent run per study in the models'
experiment, each trial's training run its child. Not imported by the stages."""
from __future__ import annotations

import time
from pathlib import Path

from mnistflow.tracking.runs import run_of_weights
from mnistflow.tracking.store import client, experiment_id

STUDY_TAG = "mnistflow.study"  # on the study's run and on each trial's training run
TRIAL_TAG = "mnistflow.trial"  # the trial's number; "study" on the study's own run


def study_run(experiment: str, study: str, params: dict) -> str:
    """The study's run, made once with these params; processes that made one at the same
    moment keep the earliest and delete their own."""
    from mlflow.entities import Param

    store, exp_id = client(), experiment_id(experiment)
    query = f"tags.`{STUDY_TAG}` = '{study}' and tags.`{TRIAL_TAG}` = 'study'"

    def found():
        return store.search_runs([exp_id], query, order_by=["attributes.start_time ASC", "attributes.run_id ASC"])

    if runs := found():
        return runs[0].info.run_id
    run_id = store.create_run(exp_id, run_name=f"study · {study}", tags={STUDY_TAG: study, TRIAL_TAG: "study"}).info.run_id
    store.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    store.set_terminated(run_id, "FINISHED")
    first = found()[0].info.run_id
    if first != run_id:
        store.delete_run(run_id)
    return first


def adopt(experiment: str, weights_md5: str, parent: str, study: str, trial: int) -> str | None:
    """Make the run that trained these weights a child of the study's run; its id, or None
    where no run in this store trained them."""
    run = run_of_weights(experiment, weights_md5)
    if run is None or "evaluation_only" in run.data.tags:
        return None
    store = client()
    for key, value in {"mlflow.parentRunId": parent, STUDY_TAG: study, TRIAL_TAG: str(trial)}.items():
        store.set_tag(run.info.run_id, key, value)
    return run.info.run_id


def record(parent: str, metrics: dict[str, float], tags: dict[str, str], files: list[Path]) -> None:
    """The study's outcome on its run: the best trial's metrics and tags, the figures under study/."""
    from mlflow.entities import Metric, RunTag

    store, now = client(), int(time.time() * 1000)
    store.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                    tags=[RunTag(k, str(v)) for k, v in tags.items()])
    for path in files:
        store.log_artifact(parent, str(path), "study")
