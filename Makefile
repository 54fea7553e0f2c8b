# Everything runs inside .venv, created with the default python3 and filled on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STUDY_DIR ?= runs/study

.PHONY: install test test-all test-floors study bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP) test-floors
	$(PY) -m pytest -m ''

# The lowest versions pyproject.toml allows (constraints/floors.txt), in their own venv, on the
# core tests: the declared floors stay true.
FLOORS_VENV := .venv-floors
FLOORS_STAMP := $(FLOORS_VENV)/.installed
CORE_TESTS := tests/test_checkpointing.py tests/test_train.py tests/test_stats.py \
	tests/test_calibration.py tests/test_resume.py

$(FLOORS_STAMP): pyproject.toml constraints/floors.txt
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOORS_VENV)/bin/python -m pip install --quiet -c constraints/floors.txt -e '.[test]'
	touch $(FLOORS_STAMP)

test-floors: $(FLOORS_STAMP)
	$(FLOORS_VENV)/bin/python -m pytest $(CORE_TESTS)

study: $(STAMP)
	$(VENV)/bin/rnn-spectra study --preset cpu --workdir $(STUDY_DIR)

bench: $(STAMP)
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install --quiet -e '.[bench]' \
		|| echo 'PyTorch could not be installed: its rows will be skipped'
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(FLOORS_VENV) runs .pytest_cache
