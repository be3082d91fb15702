# Two commands do all set-up: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
CPU_ENV := JAX_PLATFORMS=cpu

.PHONY: demo test lint install prepare train sample benchmark browser clean

# The demo needs the runtime only; the tests add the test extra (pytest, ruff, libtpu for AOT, the viewer, ...).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; run 'make PYTHON=python3 ...'" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(TEST_STAMP)

install: $(STAMP)

prepare: $(STAMP)
	$(CPU_ENV) $(PY) data/prepare.py

train: prepare
	$(CPU_ENV) $(PY) train.py --config tiny --workdir runs/default

sample: $(STAMP)
	$(CPU_ENV) $(PY) sample.py --workdir runs/default --out samples

demo: train sample
	@echo "Samples written to samples/ (MIDI, piano-roll PNG, WAV); open samples/index.html to listen."

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Best effort: the listening-page test needs a headless Chromium; it skips, naming why, when there is none.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && exit 0; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then SUDO=; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "make: no chromium/chromedriver and no apt-get to install them: the browser test will skip"; exit 0; fi; \
	echo "make: installing chromium and chromium-driver for the browser test (apt-get)"; \
	$$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
	|| { $$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } \
	|| echo "make: could not install chromium: the browser test will skip"; exit 0

test: $(TEST_STAMP) browser
	$(VENV)/bin/ruff check .
	$(CPU_ENV) $(PY) -m pytest -q tests

# `make benchmark ARGS="--mat_dir FOLDER --write_docs"`: the .mat files' folder; rewrite docs/ only when asked.
benchmark: $(STAMP)
	$(CPU_ENV) $(PY) benchmarks/polyphonic.py $(ARGS)

clean:
	rm -rf runs samples data/default_corpus data/records
