# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 300
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export GX_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: setup demo test test-fast bench mlflow-ui mlflow-server clean

# The venv is stale when pyproject.toml changes; a second `make setup` with nothing changed installs nothing.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"           # first: a CPU wheel here, your CUDA build on a GPU box
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)        ## the main job on the embedded default: synth -> DVC -> validate (-> later stages)
	$(BIN)/stepvideo flow run

test: $(STAMP)        ## the whole suite, slow end-to-end tests included (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)   ## everything but the slow end-to-end tests
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

mlflow-ui: $(STAMP)   ## browse runs and the model registry at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

mlflow-server: $(STAMP)  ## a tracking server (sqlite + ./mlflow-server/artifacts) on :5000; see infra/mlflow/README.md
	PATH=$(CURDIR)/$(BIN):$$PATH infra/mlflow/serve.sh

clean:
	rm -rf outputs .prefect mlflow/mlflow.db mlflow/artifacts
