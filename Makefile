# Every target sets itself up: the first use creates .venv and installs the project into it.
#   make train   the main job: CDLM on embedded data (no downloads) on Ray Train with 2 local
#                CPU workers, then its summary beside a source-only baseline
#   make test    the test suite (what CI runs)
#   make test-fast  the suite without the tests that start Ray (pytest marker `ray`)
#   make lint    ruff
#   make bench   accuracy benchmark (BENCH_ARGS=... to change it); bench-step-cost, bench-peer
#                (installs the optional pytorch-adapt extra), bench-scaling, bench-multidomain,
#                bench-sweep, bench-cost-model (the cluster cost model) for the others; bench-gpu
#                the prepared GPU run (benchmarks/gpu.py;
#                BENCH_ARGS=--smoke runs it on a CPU in 1.5-3 minutes)
#   make submit  submit a job to a Ray cluster (ARGS="train ... --follow")
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install train test test-fast lint bench bench-step-cost bench-peer bench-scaling bench-multidomain \
	bench-sweep bench-cost-model bench-gpu submit clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 10), "cdlm-dist needs Python 3.10+; set PY=python3.x"'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The main job runs the distributed path (Ray Train, 2 local CPU workers) from the first command;
# `cdlm-train` alone uses runner=local, the debugging path.
train: $(STAMP)
	$(BIN)/cdlm-train runner=ray $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not ray" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cdlm_dist tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/accuracy.py $(BENCH_ARGS)

bench-step-cost: $(STAMP)
	$(BIN)/python benchmarks/step_cost.py $(BENCH_ARGS)

bench-peer: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[peer]'
	$(BIN)/python benchmarks/peer.py $(BENCH_ARGS)

bench-scaling: $(STAMP)
	$(BIN)/python benchmarks/scaling.py $(BENCH_ARGS)

bench-multidomain: $(STAMP)
	$(BIN)/python benchmarks/multidomain.py $(BENCH_ARGS)

bench-sweep: $(STAMP)
	$(BIN)/python benchmarks/sweep.py $(BENCH_ARGS)

bench-cost-model: $(STAMP)
	$(BIN)/python benchmarks/cost_model.py $(BENCH_ARGS)

# Stops by itself within --time-limit (seconds) and keeps what it measured (README "On a GPU")
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu.py --time-limit 480 --out bench_results/gpu $(BENCH_ARGS)

# make submit ARGS="train train.steps=500 --follow"   (see docs/cluster.md)
submit: $(STAMP)
	$(BIN)/cdlm-submit $(ARGS)

clean:
	rm -rf runs bench_results .pytest_cache
