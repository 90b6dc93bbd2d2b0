# make repro: set up (venv, OS data copy) and run the whole pipeline.
# make test:  the same set-up, then the tests.
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
STORE := sqlite:///$(CURDIR)/mlruns/mlflow.db
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

# DVC stage commands call `python`: make it the venv's.
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
# The report page links runs where `make ui` serves them.
export MLFLOW_UI_URL := http://$(UI_HOST):$(UI_PORT)

.PHONY: setup repro exps dag screenshots compare-optimizers mnist-tutorial bench bench-team server server-stop test test-slow test-fast ui serve system-data test-tools repro-check lock-check push pull lineage restore

PLOTS_PAGE := .plots/page.html

setup: $(VENV)/.installed system-data $(PLOTS_PAGE)

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
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
$(PLOTS_PAGE): src/mnistflow/plotpage.py | $(VENV)/.installed
	npm install --prefix .plots --no-audit --no-fund --legacy-peer-deps --silent \
		vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
	PYTHONPATH=src $(BIN)/python -m mnistflow.plotpage .plots/node_modules $@

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

repro: setup
	$(BIN)/dvc repro

# Which params gave which accuracy: one table per model, what varied for it and its accuracy per
# test set, at 120 columns and in a pipe (EXPS_FORMAT=--md or --csv for others).
exps: setup
	PYTHONPATH=src $(BIN)/python -m mnistflow.exps $(EXPS_FORMAT)

# The pipeline's stages and what each runs after, at 100 columns (docs/pipeline.md has the chart).
dag: setup
	PYTHONPATH=src $(BIN)/python -m mnistflow.dag

# The docs' MLflow screenshots (docs/mlflow-*.png) from this repo's own store, after `make repro`.
screenshots: setup test-tools
	PYTHONPATH=src $(BIN)/python -m mnistflow.screenshots --out docs

# The tutorials' optimizer comparison: COMPARE_MODEL once per optimizer (sgd, adam, adadelta,
# adagrad, rmsprop) as queued DVC experiments on JOBS workers; their curves go to
# reports/optimizers.json (commit it), which `dvc repro` draws on the report page.
compare-optimizers: setup
	PYTHONPATH=src $(BIN)/python -m mnistflow.compare --model $(COMPARE_MODEL) --jobs $(JOBS)
	$(BIN)/dvc repro

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
	$(BIN)/dvc repro preprocess
	$(BIN)/python bench/train_speed.py

# Eight queued experiments on four workers against the team server and against sqlite, on tiny
# data in a clone of HEAD: runs complete, errors, log_batch latency (the README's load table).
bench-team: setup test-tools
	PYTHONPATH=src $(BIN)/python bench/team_load.py

# A team tracking server: MLflow's basic-auth app over a PostgreSQL cluster of its own in
# SERVER_DIR, artifacts served through it, on SERVER_HOST:SERVER_PORT (loopback unless told).
# Admin password: MNISTFLOW_ADMIN_PASSWORD, else generated into SERVER_DIR/admin-password.
SERVER_DIR ?= .server
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5050
server: setup
	PYTHONPATH=src $(BIN)/python -m mnistflow.server start --dir $(SERVER_DIR) --host $(SERVER_HOST) --port $(SERVER_PORT)

server-stop: setup
	PYTHONPATH=src $(BIN)/python -m mnistflow.server stop --dir $(SERVER_DIR)

# Every output of the pipeline to the DVC remote (`dvc remote list`), and back into a fresh clone.
push: setup
	$(BIN)/dvc push

pull: setup
	$(BIN)/dvc pull

# Does the committed dvc.lock record the committed code and params? (CI runs it; nothing is trained.)
lock-check: setup
	PYTHONPATH=src $(BIN)/python -m mnistflow.lockcheck

# Two workers, one test file each at a time: the end-to-end files mostly wait on subprocesses.
test: setup test-tools
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow"

# The slow tests: the team-server load test, the numerics under emulated CPUs, the optimizer
# comparison and the extra models; tens of minutes; CI runs it after make test.
test-slow: setup test-tools
	$(BIN)/python -m pytest -m slow

# The unit tests alone (no end-to-end pipeline runs): well under a minute.
test-fast: setup
	$(BIN)/python -m pytest -m "not e2e and not slow" -n 2

# The pipeline twice from empty DVC caches on tiny data: every output hash and metric must agree.
repro-check: setup
	PYTHONPATH=src $(BIN)/python -m mnistflow.reprocheck

# Lineage of an MLflow run: `make lineage RUN=<run id>`; `make restore RUN=<run id> DEST=<new dir>`.
lineage: setup
	PYTHONPATH=src $(BIN)/python -m mnistflow.lineage show $(RUN)

restore: setup
	PYTHONPATH=src $(BIN)/python -m mnistflow.lineage restore $(RUN) $(DEST)

# The MLflow UI over the project's store, on loopback unless UI_HOST says otherwise. First the
# store is checked (repointed if the repo moved) and the page to open is printed.
ui: setup
	PYTHONPATH=src $(BIN)/python -m mnistflow.tracking
	$(BIN)/mlflow server --host $(UI_HOST) --port $(UI_PORT) --backend-store-uri $(STORE)

# The champion of one model (`make serve MODEL=lenet`) as a REST endpoint: POST raw pixels to /invocations.
serve: setup
	PYTHONPATH=src $(BIN)/python -m mnistflow.tracking >/dev/null
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(STORE)} $(BIN)/mlflow models serve --env-manager local \
		-m "models:/$$($(BIN)/python -c 'import yaml; print(yaml.safe_load(open("params.yaml"))["data"]["dataset"])')-$(MODEL)@champion" \
		--host $(SERVE_HOST) --port $(SERVE_PORT)
