# `make demo` and `make test` work on a fresh machine with only Python 3.10+ installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch when no NVIDIA GPU is present: seconds instead of a multi-GB download.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?= -m "not slow"
# The versions the suite was run with (`make lock` refreshes it); pyproject keeps the ranges
# for people who install alignlab as a library.
LOCK := requirements.lock
# serve: the server's tests run against a live FastAPI app with the official openai client.
EXTRAS ?= dev,serve
# --no-compile: byte-compiling every file of torch and transformers at install takes about a
# minute on 2 cores. WARM then compiles, once, what every run imports (~20 s), even where
# PYTHONDONTWRITEBYTECODE is set: else each new process would compile it again (~8 s each).
# The test suite starts hundreds of processes, so `make test` warms; the demo is one process,
# which compiles its imports once in ~8 s, so `make demo` does not (it saves ~13 s of its 10
# minutes).
PIP_INSTALL := $(BIN)/python -m pip install -q --no-compile
WARM := PYTHONDONTWRITEBYTECODE= $(BIN)/python -c "import alignlab.cli, alignlab.recipes.sft, \
	alignlab.recipes.dpo, alignlab.recipes.ppo, alignlab.lab.demo, peft, datasets, scipy.stats, \
	matplotlib.pyplot, transformers; from transformers import AutoModelForCausalLM, \
	AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification"

.PHONY: setup demo test lint bench lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP_INSTALL) "$(TORCH_SPEC)"
	$(PIP_INSTALL) -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

$(VENV)/.warm: $(VENV)/.installed
	$(WARM)
	touch $@

demo: setup
	$(BIN)/alignlab lab demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint $(VENV)/.warm
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PIP_INSTALL) -c $(LOCK) -e ".[bench]"
	$(BIN)/python benchmarks/sft_speed.py
	$(BIN)/python benchmarks/dpo_speed.py
	$(BIN)/python benchmarks/rl_speed.py
	$(BIN)/python benchmarks/generation_speed.py

# Resolve the newest versions pyproject allows in a scratch venv, with pip (uv and poetry would
# download a CUDA torch), and pin them; torch is pinned as TORCH_SPEC installs it.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q "$(TORCH_SPEC)"
	.lock-venv/bin/python -m pip install -q -e ".[dev,bench,serve]"
	{ echo "# make lock: the versions the test suite ran with (pip install -c $(LOCK) ...)"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
