# fairmonai: `make demo` runs the main job on the built-in cohort, `make test` runs the tests.
# Both create .venv and install what they need (a CPU build of torch, the package and its test extras).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU torch: on this project's machines pip finds the 2.13.0 CPU wheel on local disk.
# Elsewhere, point pip at a CPU wheel index, e.g. make TORCH_PIP_ARGS="--index-url <cpu index>".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.fairmonai-installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: demo test lint format bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=77" wheel
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --no-build-isolation -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fairmonai demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/bench_cine_cache.py --out bench/results
	$(BIN)/python bench/bench_fair_classifier.py --out bench/results
	$(BIN)/python bench/bench_fair_segmentation.py --out bench/results
	$(BIN)/python bench/bench_sampling.py --out bench/results
	$(BIN)/python bench/bench_diffusion_trainer.py --out bench/results
	$(BIN)/python bench/bench_cardiac_cine_ldm.py --subjects 24 --image-size 32 --batch-size 8 --iterations 8 \
		--repeats 3 --threads 1 --out bench/results
	$(BIN)/python bench/bench_fairness_pipeline.py --preset demo --out bench/results
	$(BIN)/python bench/collect.py --results bench/results --out bench/results.json

clean:
	rm -rf $(DEMO_OUT) bench/results bench/results.json .pytest_cache .ruff_cache
