# Two entry points for a fresh machine: `make run` (the main job on the embedded default) and
# `make test` (the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv run test bench-embedded bench-quality clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/copl run --out runs/demo --overwrite

test: venv
	$(PY) -m pytest -q

bench-embedded: venv
	$(VENV)/bin/copl bench embedded --seeds 3

bench-quality: venv
	$(VENV)/bin/copl bench quality --seeds 3

clean:
	rm -rf runs .pytest_cache
