# Two commands for a fresh machine:  `make run` (install + materialize the demo grid)  and  `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.promptlab-installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install run check-data test test-integration ui ui-test bench bench-testtime bench-baselines clean-workspace

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,distributed]"
	touch $(STAMP)

install: $(STAMP)

# `make run GRID=quick`: a named subset of the grid (assets_catalog/grids.yaml). Without GRID: `demo`, every protocol
# on Shapes and its two shifted variants at seeds 1-3 with the report's published-pattern checks (measured: 5 min on
# 2 CPU cores from a fresh clone, install excluded). Estimated on 2 cores by `promptlab plan --grid NAME`:
# GRID=quick (every method and protocol once, DiffTPT's generated views included, SPG left to GRID=spg) about 2 h;
# GRID=standard (all but the iterative pseudolabel strategies and CLIP-LoRA below 16 shots) about 9 h;
# GRID=default (everything) about 12 h.
# `make run SUITE=coop BACKBONE=ViT-B-16-openai`: a benchmark suite of real datasets under $PROMPTLAB_DATA
# (assets_catalog/suites/) instead of the embedded world; `make check-data SUITE=coop` checks its folders first.
GRID ?= $(if $(SUITE),default,demo)
SUITE ?=
BACKBONE ?=
run: install
	$(BIN)/promptlab run --grid $(GRID) $(if $(SUITE),--suite $(SUITE)) $(if $(BACKBONE),--backbone $(BACKBONE))

check-data: install
	$(BIN)/promptlab data check $(if $(SUITE),--suite $(SUITE))

# Includes the browser suite's smoke tests (tests/ui, marker `ui`: Debian's chromium, about a minute);
# PROMPTLAB_SKIP_BROWSER=1 skips them.
test: install
	$(BIN)/python -m pytest -q

# The scale-out tests end to end (marker `integration`: two workers, Celery workers with Redis and PostgreSQL, a
# second machine over object storage, the benchmark suites' minis; 9 min 15 s on 2 cores). CI runs them after
# `make test`.
test-integration: install
	$(BIN)/python -m pytest -q -m integration

# The whole browser suite: launches the world, curation, an experiment and the report from the UI (about 3 minutes).
ui-test: install
	$(BIN)/python -m pytest -q -m ui tests/ui

# Training throughput of every method (cache vs re-encoding, batched CoCoOp), to the warehouse and bench/results/.
bench: install
	$(BIN)/python -m bench.throughput

# Test-time tuning (TPT) images/s: batched + cached against the authors' reference-style loop (bench/results/).
bench-testtime: install
	$(BIN)/python -m bench.testtime

# Each few-shot baseline's training on its published 16-shot schedule beside CoOp's (Tip-Adapter's Table 1 anchor).
bench-baselines: install
	$(BIN)/python -m bench.baseline_training

# The UI on http://127.0.0.1:3000, and the workspace's reports/ folder on http://127.0.0.1:$(REPORT_PORT)/ so that
# the report asset's link opens (browsers do not follow file:// links from a web page).
REPORT_PORT ?= 3001
ui: install
	$(BIN)/python -m pipelines.ui_instance
	reports="$${PROMPTLAB_WORKSPACE:-$(CURDIR)/workspace}/reports"; mkdir -p "$$reports"; \
	$(BIN)/python -m http.server $(REPORT_PORT) --bind 127.0.0.1 --directory "$$reports" >/dev/null 2>&1 & \
	server=$$!; trap 'kill $$server' EXIT INT TERM; \
	PROMPTLAB_REPORT_URL=http://127.0.0.1:$(REPORT_PORT)/ $(BIN)/dagster dev -m pipelines.definitions

clean-workspace:
	rm -rf workspace .dagster_home
