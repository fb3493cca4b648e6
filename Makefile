# Two commands for a fresh machine:  `make run` (install + materialize the default graph)  and  `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.promptlab-installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install run test ui bench bench-testtime clean-workspace

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# `make run GRID=quick`: a named subset of the grid (assets_catalog/grids.yaml). Without GRID: `standard`, the whole
# grid except the iterative pseudolabel strategies (hours on 2 cores); `make run GRID=default` runs everything.
GRID ?= standard
run: install
	$(BIN)/promptlab run --grid $(GRID)

test: install
	$(BIN)/python -m pytest -q

# Training throughput of every method (cache vs re-encoding, batched CoCoOp), to the warehouse and bench/results/.
bench: install
	$(BIN)/python -m bench.throughput

# Test-time tuning (TPT) images/s: batched + cached against the authors' reference-style loop (bench/results/).
bench-testtime: install
	$(BIN)/python -m bench.testtime

ui: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -m pipelines.definitions

clean-workspace:
	rm -rf workspace .dagster_home
