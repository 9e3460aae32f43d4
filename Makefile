# Two entry points: `make demo` and `make test`. Both build .venv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: venv demo test clean

$(BIN)/cryoscope: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(BIN)/cryoscope

venv: $(BIN)/cryoscope

demo: venv
	$(BIN)/cryoscope demo --out results/demo --seed 0

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results
