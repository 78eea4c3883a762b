# Two entry points for a fresh machine with Python 3.11+: `make demo` and `make test`.
# Each creates its own virtual environment in $(VENV) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test smoke lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[mpi,test]'
	touch $@

## demo: simulate a small standard-job dataset and fit it with 2 MPI ranks (one chain each)
demo: $(BIN)/.installed
	$(BIN)/hetmpi simulate jobs/standard_truth.yaml --n-frames 80 -o demo/standard.h5 --overwrite
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/mpiexec -n 2 $(BIN)/hetmpi run jobs/laptop.yaml --overwrite

## test: the test suite (real HDF5, NumPyro, mpiexec; Slurm tests need a running Slurm)
test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -ra

## smoke: a short end-to-end run (used by CI under another Python version)
smoke: $(BIN)/.installed
	$(BIN)/python -m pytest -q -ra tests/test_pipeline.py -k smoke

lint: $(BIN)/.installed
	$(BIN)/ruff check hetmpi tests benchmarks
	$(BIN)/ruff format --check hetmpi tests benchmarks

clean:
	rm -rf $(VENV) demo/out
