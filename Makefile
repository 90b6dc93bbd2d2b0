# make repro: set up (venv, OS data copy) and run the whole pipeline.
# make test:  the same set-up, then the tests.
# The other targets are short aliases of `mnistflow <command>` (`.venv/bin/mnistflow --help`);
# only those that need OS packages (data, browser, database) install them.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
UI_HOST ?= 127.0.0.1
UI_PORT ?= 5000
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 5001
MODEL ?= cnn
COMPARE_MODEL ?= mlp
JOBS ?= 2
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

# DVC stage commands call `python`: make it the venv's.
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
# The report page links runs where `make ui` serves them.
export MLFLOW_UI_URL := http://$(UI_HOST):$(UI_PORT)

.PHONY: setup venv server-tools repro exps dag screenshots compare-optimizers tune mnist-tutorial bench bench-team server server-stop test test-slow test-fast ui serve system-data test-tools repro-check lock-check push pull exp-push exp-pull lineage restore

PLOTS_PAGE := .plots/page.html

setup: venv system-data $(PLOTS_PAGE)

# The Python packages alone: the pinned requirements, and this package (editable) for `mnistflow`.
venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps \
		--config-settings editable_mode=compat -e .
	touch $@

# The offline source of Fashion-MNIST: Debian's dataset-fashion-mnist, installed only
# where we are root with apt-get; elsewhere the OS is left alone (data.mirror or a download).
system-data:
	@if [ ! -d $(FASHION_MNIST_DIR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist (Debian's copy of Fashion-MNIST)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } \
			|| echo "could not install dataset-fashion-mnist: set data.mirror in params.yaml instead"; \
	fi

# `dvc plots show` draws offline: Vega, Vega-Lite and vega-embed (DVC's versions) from the npm
# registry, inlined into the page template that .dvc/config names.
$(PLOTS_PAGE): src/mnistflow/tools/plotpage.py | venv
	npm install --prefix .plots --no-audit --no-fund --legacy-peer-deps --silent \
		vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
	PYTHONPATH=src $(BIN)/python -m mnistflow.tools.plotpage .plots/node_modules $@

# What some tests drive: headless Chromium (report page, MLflow UI, DVC plots), an OpenSSH
# server (the SSH remote), PostgreSQL (the team server) and qemu-user (other CPUs, emulated, for
# portable numerics). Installed only where we are root with apt-get; elsewhere those tests say
# why they are skipped.
test-tools:
	@missing="$$(echo $$(command -v chromium >/dev/null || echo chromium) $$(test -x /usr/sbin/sshd || echo openssh-server) \
		$$(ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || echo postgresql) \
		$$(command -v qemu-x86_64 >/dev/null || echo qemu-user))"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $$missing (for the browser, SSH-remote, team-server and other-CPU tests)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
			|| echo "could not install $$missing: the tests that need it will be skipped"; \
	fi

# Your images (data.dataset: folder) lie outside what DVC hashes: re-read them first.
repro: setup
	$(BIN)/mnistflow sources
	$(BIN)/dvc repro

# Which params gave which accuracy: one table per model, what varied for it and its accuracy per
# test set, at 120 columns and in a pipe (EXPS_FORMAT=--md or --csv for others).
exps: venv
	$(BIN)/mnistflow exps $(EXPS_FORMAT)

# The pipeline's stages and what each runs after, at 100 columns (docs/pipeline.md has the chart).
dag: venv
	$(BIN)/mnistflow dag

# The docs' MLflow screenshots (docs/mlflow-*.png) from this repo's own store, after `make repro`.
screenshots: venv test-tools
	$(BIN)/mnistflow screenshots --out docs

# The tutorials' optimizer comparison: COMPARE_MODEL once per optimizer (sgd, adam, adadelta,
# adagrad, rmsprop) as queued DVC experiments on JOBS workers; their curves go to
# reports/optimizers.json (commit it), which `dvc repro` draws on the report page.
compare-optimizers: setup
	$(BIN)/mnistflow compare-optimizers --model $(COMPARE_MODEL) --jobs $(JOBS)
	$(BIN)/dvc repro

# A hyperparameter search (params.yaml's tune section; docs/search.md): each trial a DVC
# experiment, the study in MLflow; flags in TUNE_ARGS: `make tune TUNE_ARGS="--trials 6"`.
TUNE_ARGS ?=
tune: setup
	$(BIN)/mnistflow tune $(TUNE_ARGS)

# The MNIST tutorial's MLP (784-500-10, Adam at 1e-3, batch 100, 10 epochs, no schedule) and its
# crop22 test, as one DVC experiment (--temp: the workspace keeps its outputs) on MNIST from
# MNIST_DIR, a folder holding its four IDX files; `make exps` then shows its accuracies.
MNIST_DIR ?=
TUTORIAL_MLP := -S 'train.models=[mlp]' -S train.mlp.optimizer=adam -S train.mlp.lr=0.001 \
	-S train.mlp.weight_decay=0 -S train.mlp.scheduler.name=none -S train.mlp.epochs=10 \
	-S train.mlp.batch_size=100 -S train.mlp.shift=0
mnist-tutorial: setup
	@test -n "$(MNIST_DIR)" || { echo "set MNIST_DIR to a folder holding MNIST's four IDX files (gzipped or not)" >&2; exit 2; }
	-@$(BIN)/dvc exp remove -q mnist-tutorial 2>/dev/null  # run again: it replaces the last one
	$(BIN)/dvc exp run --temp -n mnist-tutorial -S data.dataset=mnist -S data.mirror=$(abspath $(MNIST_DIR)) $(TUTORIAL_MLP)

# Training speed: the tutorial's textbook loop against the project's on the default cnn, in both
# numerics modes (bench/train_speed.py; docs/benchmarks.md).
bench: setup
	$(BIN)/mnistflow bench

# Eight queued experiments on four workers against the team server and against sqlite, on tiny
# data in a clone of HEAD: runs complete, errors, log_batch latency (the README's load table).
bench-team: setup test-tools
	PYTHONPATH=src $(BIN)/python bench/team_load.py

# A team tracking server: MLflow's basic-auth app over a PostgreSQL cluster of its own in
# SERVER_DIR, artifacts served through it, on SERVER_HOST:SERVER_PORT (loopback unless told).
# Artifacts on S3: MNISTFLOW_ARTIFACTS=s3://<bucket>/<prefix>, the server's credentials in AWS_*
# (MLFLOW_S3_ENDPOINT_URL for an S3-compatible store); docs/team-server.md.
# Admin password: MNISTFLOW_ADMIN_PASSWORD, else generated into SERVER_DIR/admin-password.
SERVER_DIR ?= .server
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5050
server: venv server-tools
	$(BIN)/mnistflow server start --dir $(SERVER_DIR) --host $(SERVER_HOST) --port $(SERVER_PORT)

server-stop: venv
	$(BIN)/mnistflow server stop --dir $(SERVER_DIR)

# PostgreSQL for the team server: Debian's, installed only where we are root with apt-get.
server-tools:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing postgresql (for the team server)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
			|| echo "could not install postgresql: install it, then make server"; \
	fi

# Every output of the pipeline to the DVC remote (`dvc remote list`), and back into a fresh clone.
# An S3 remote's bucket is looked at first: wrong credentials, a missing bucket or no endpoint is one line.
push: venv
	$(BIN)/mnistflow remote-check
	$(BIN)/dvc push

pull: venv
	$(BIN)/mnistflow remote-check
	$(BIN)/dvc pull

# Experiments made on another machine (a colleague's, a CI runner, the GPU box): `make exp-push`
# sends this commit's experiments (or EXP="name ...") to the git remote GIT_REMOTE, their outputs to
# the DVC remote; `make exp-pull` on the other machine brings them in for `make exps`, `dvc exp apply`.
GIT_REMOTE ?= origin
EXP ?=
exp-push: venv
	$(BIN)/mnistflow remote-check
	$(BIN)/dvc exp push $(GIT_REMOTE) $(EXP)

exp-pull: venv
	$(BIN)/mnistflow remote-check
	$(BIN)/dvc exp pull $(GIT_REMOTE) $(EXP)

# Does the committed dvc.lock record the committed code and params? (CI runs it; nothing is trained.)
lock-check: venv
	$(BIN)/mnistflow lock-check

# Two workers, one test file each at a time (a file's module fixtures are built once); the
# slowest tests are listed at the end: where the time goes.
test: setup test-tools
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow" --durations=15

# The slow tests: the load tests, the numerics under emulated CPUs, the searches and queued
# comparisons, the scale-out faults; about a quarter of an hour; CI runs it after make test.
test-slow: setup test-tools
	$(BIN)/python -m pytest -n 2 --dist loadfile -m slow --durations=15

# The unit tests alone (no end-to-end pipeline runs): well under a minute.
test-fast: venv
	$(BIN)/python -m pytest -m "not e2e and not slow" -n 2 --dist loadfile

# The pipeline twice from empty DVC caches on tiny data: every output hash and metric must agree.
repro-check: venv system-data
	$(BIN)/mnistflow repro-check

# Lineage of an MLflow run: `make lineage RUN=<run id>`; `make restore RUN=<run id> DEST=<new dir>`.
lineage: venv
	$(BIN)/mnistflow lineage $(RUN)

restore: venv
	$(BIN)/mnistflow restore $(RUN) $(DEST)

# The MLflow UI over the project's store, on loopback unless UI_HOST says otherwise. First the
# store is checked (repointed if the repo moved) and the page to open is printed.
ui: venv
	$(BIN)/mnistflow ui --host $(UI_HOST) --port $(UI_PORT)

# The champion of one model (`make serve MODEL=lenet`) as a REST endpoint: POST raw pixels to /invocations.
serve: venv
	$(BIN)/mnistflow serve $(MODEL) --host $(SERVE_HOST) --port $(SERVE_PORT)
