# Two commands do all set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CPU_ENV := JAX_PLATFORMS=cpu

.PHONY: demo test lint install prepare train sample benchmark clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; run 'make PYTHON=python3 ...'" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

prepare: $(STAMP)
	$(CPU_ENV) $(PY) data/prepare.py

train: prepare
	$(CPU_ENV) $(PY) train.py --config tiny --workdir runs/default

sample: $(STAMP)
	$(CPU_ENV) $(PY) sample.py --workdir runs/default --out samples

demo: train sample
	@echo "Samples written to samples/ (MIDI + piano-roll PNG)."

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(CPU_ENV) $(PY) -m pytest -q tests

benchmark: $(STAMP)
	$(CPU_ENV) $(PY) benchmarks/polyphonic.py

clean:
	rm -rf runs samples data/default_corpus data/records
