"""Everything MLflow, and the one package that talks to it:

- store: where the store is, the one client (which first reaps runs killed processes left
  RUNNING), the experiments;
- runs: one run per trained model, evaluation and figures added to it, one run per report;
- registry: the registered models, their served form and aliases;
- provenance: what made a run, and its name;
- ui: the experiments' layout and saved views, the links `make ui` prints and the report page's
  (not imported here: only where a user asks for them);
- lineage: what made a run, and getting it back (the DVC internals it needs: dvc_internals);
- serving: the logged model's served form;
- relocate: a store moved with its repo, repointed.

The names the stages use are here."""
from mnistflow.tracking.provenance import (environment, file_md5, git_state, made_by, made_from, node, run_label,
                                           run_tags)
from mnistflow.tracking.registry import CANDIDATE, CHAMPION, log_model_args, model_name, promote
from mnistflow.tracking.relocate import relocate_store
from mnistflow.tracking.runs import (PROCESS_TAG, TrackedRun, attach_figures, dataset, download, fail_dead_runs,
                                     find_training_run, get_run, log_evaluation, log_report, metric_history,
                                     peer_system_metrics, reports_experiment, run_for_model, run_of_weights, system_metrics,
                                     tracked_run)
from mnistflow.tracking.store import check_server, client, errors, experiment_id, tracking_uri

__all__ = ["CANDIDATE", "CHAMPION", "PROCESS_TAG", "TrackedRun", "attach_figures", "check_server", "client", "dataset",
           "download", "environment", "errors", "experiment_id", "fail_dead_runs", "file_md5", "find_training_run",
           "get_run", "git_state", "log_evaluation", "log_model_args", "log_report", "made_by", "made_from",
           "metric_history", "model_name", "node", "peer_system_metrics", "promote", "relocate_store",
           "reports_experiment", "run_for_model", "run_label", "run_of_weights", "run_tags", "system_metrics",
           "tracked_run", "tracking_uri"]
