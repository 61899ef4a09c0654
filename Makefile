# `make demo` and `make test` work on a fresh machine with only Python 3.10+ installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch when no NVIDIA GPU is present: seconds instead of a multi-GB download.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/alignlab lab demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/sft_speed.py
	$(BIN)/python benchmarks/dpo_speed.py
	$(BIN)/python benchmarks/rl_speed.py
	$(BIN)/python benchmarks/generation_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
