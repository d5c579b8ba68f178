# `make demo`: set-up + the whole pipeline on the bundled demo data.
# `make test`: set-up + the test suite.   `make bench`: the benchmarks.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/demo
DEMO_RUNS ?= models

# bench_small_data.py (recipes on a small photo dataset, ~40 min) runs with `make bench-small-data`.
BENCHES := writer seg_writer pipeline seg_pipeline augment models tta ensemble

.PHONY: install test demo bench bench-small-data clean-demo

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest tests

demo: install
	@start=$$(date +%s); set -e; \
	$(BIN)/python -m foldnet.demo_data --out_dir $(DEMO_DIR); \
	$(BIN)/python create_tfrecords.py --data_dir $(DEMO_DIR); \
	DATA_DIR=$(DEMO_DIR) MODELS=demo RUNS_DIR=$(DEMO_RUNS) PYTHON=$(BIN)/python bash run_training.sh; \
	DATA_DIR=$(DEMO_DIR) MODELS=demo RUNS_DIR=$(DEMO_RUNS) PYTHON=$(BIN)/python SUBMISSION=$(DEMO_DIR)/submission.csv bash run_inference.sh; \
	echo "== demo test set vs $(DEMO_DIR)/answers.csv"; \
	$(BIN)/python -m foldnet.evaluate --submission $(DEMO_DIR)/submission.csv --answers $(DEMO_DIR)/answers.csv; \
	echo "== demo finished in $$(( $$(date +%s) - start )) s"

bench: install
	mkdir -p bench/out
	for b in $(BENCHES); do echo "== bench/bench_$$b.py"; $(BIN)/python bench/bench_$$b.py || exit 1; done

bench-small-data: install
	mkdir -p bench/out
	$(BIN)/python bench/bench_small_data.py

clean-demo:
	rm -rf $(DEMO_DIR) $(DEMO_RUNS)/demo
