# `make demo`: set-up + the whole pipeline on the bundled demo data.
# `make demo-seg`: the same for segmentation on synthetic Kelp Wanted tiles (models/seg_small.yaml),
#   then the Dice of foldnet's submission, of its ensemble with the per-pixel gradient-boosting
#   member (OOF-fitted weights), of the NDVI-threshold baseline and, last, of the per-pixel
#   gradient-boosting baseline (foldnet baseline --method gbm) on the same test tiles.
# `make demo-biomass`: the same for temporal regression (BioMassters stand-in), GBM last.
# `make test`: set-up + the test suite (TEST_WORKERS pytest-xdist processes, one test file each at a time).
# `make bench`: the benchmarks.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= data/demo
DEMO_RUNS ?= runs
SEG_DEMO_DIR ?= data/kelp_demo
BIO_DEMO_DIR ?= data/biomass_demo
# extra `foldnet demo-data` flags, e.g. BIO_DEMO_ARGS="--n_train 96 --n_test 32"
SEG_DEMO_ARGS ?=
BIO_DEMO_ARGS ?=
BIO_MODELS ?= biomass_demo biomass_one_month biomass_mean biomass_small
# 2 workers: make test 7m50s against 15m37s serial on 2 idle cores (three workers: no gain). Each holds TensorFlow and a
# test file's models (the large-backbone builds peak at ~4 GB), so more workers need more memory.
TEST_WORKERS ?= 2

# bench_small_data.py (recipes on a small photo dataset, ~40 min) runs with `make bench-small-data`.
BENCHES := writer seg_writer pipeline pipeline_build seg_pipeline augment models tta ensemble seg_ensemble

.PHONY: install test demo demo-seg demo-biomass bench bench-small-data clean-demo

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile tests

demo: install
	@start=$$(date +%s); set -e; \
	$(BIN)/python -m foldnet demo-data --out_dir $(DEMO_DIR); \
	$(BIN)/python create_tfrecords.py --data_dir $(DEMO_DIR); \
	DATA_DIR=$(DEMO_DIR) MODELS=demo RUNS_DIR=$(DEMO_RUNS) PYTHON=$(BIN)/python bash run_training.sh; \
	DATA_DIR=$(DEMO_DIR) MODELS=demo RUNS_DIR=$(DEMO_RUNS) PYTHON=$(BIN)/python SUBMISSION=$(DEMO_DIR)/submission.csv bash run_inference.sh; \
	$(BIN)/python -m foldnet baseline --data_dir $(DEMO_DIR) --out $(DEMO_DIR)/baseline.csv; \
	echo "== demo test set vs $(DEMO_DIR)/answers.csv"; \
	printf "foldnet (demo, 5 folds):               "; \
	$(BIN)/python -m foldnet evaluate --submission $(DEMO_DIR)/submission.csv --answers $(DEMO_DIR)/answers.csv; \
	printf "logistic regression on thumbnails:     "; \
	$(BIN)/python -m foldnet evaluate --submission $(DEMO_DIR)/baseline.csv --answers $(DEMO_DIR)/answers.csv; \
	echo "== demo finished in $$(( $$(date +%s) - start )) s"

demo-seg: install
	@start=$$(date +%s); set -e; \
	$(BIN)/python -m foldnet demo-data --kind kelp --out_dir $(SEG_DEMO_DIR) $(SEG_DEMO_ARGS); \
	$(BIN)/python create_tfrecords.py --data_dir $(SEG_DEMO_DIR); \
	DATA_DIR=$(SEG_DEMO_DIR) MODELS=seg_small RUNS_DIR=$(DEMO_RUNS) PYTHON=$(BIN)/python bash run_training.sh; \
	DATA_DIR=$(SEG_DEMO_DIR) MODELS=seg_small RUNS_DIR=$(DEMO_RUNS) PYTHON=$(BIN)/python \
	  SUBMISSION=$(SEG_DEMO_DIR)/submission.tar bash run_inference.sh; \
	$(BIN)/python -m foldnet baseline --data_dir $(SEG_DEMO_DIR) --out $(SEG_DEMO_DIR)/baseline.tar; \
	$(BIN)/python -m foldnet baseline --method gbm --data_dir $(SEG_DEMO_DIR) --run_dir $(DEMO_RUNS)/seg_gbm; \
	$(BIN)/python -m foldnet ensemble --runs $(DEMO_RUNS)/seg_gbm --data_dir $(SEG_DEMO_DIR) \
	  --tfrec_dir $(SEG_DEMO_DIR)/tfrec --submission $(SEG_DEMO_DIR)/gbm.tar --quiet; \
	DATA_DIR=$(SEG_DEMO_DIR) MODELS=seg_small RUNS_DIR=$(DEMO_RUNS) PYTHON=$(BIN)/python \
	  EXTRA_RUNS=$(DEMO_RUNS)/seg_gbm FIT_WEIGHTS=1 SUBMISSION=$(SEG_DEMO_DIR)/ensemble.tar bash run_inference.sh; \
	echo "== demo test tiles vs $(SEG_DEMO_DIR)/answers (pooled Dice over all pixels)"; \
	printf "foldnet (seg_small, 5 folds):    "; \
	$(BIN)/python -m foldnet evaluate --submission $(SEG_DEMO_DIR)/submission.tar --answers $(SEG_DEMO_DIR)/answers --naming kelp; \
	printf "foldnet ensemble seg_small + GBM: "; \
	$(BIN)/python -m foldnet evaluate --submission $(SEG_DEMO_DIR)/ensemble.tar --answers $(SEG_DEMO_DIR)/answers --naming kelp; \
	printf "NDVI-threshold baseline:         "; \
	$(BIN)/python -m foldnet evaluate --submission $(SEG_DEMO_DIR)/baseline.tar --answers $(SEG_DEMO_DIR)/answers --naming kelp; \
	printf "per-pixel gradient boosting:     "; \
	$(BIN)/python -m foldnet evaluate --submission $(SEG_DEMO_DIR)/gbm.tar --answers $(SEG_DEMO_DIR)/answers --naming kelp; \
	echo "== demo-seg finished in $$(( $$(date +%s) - start )) s"

# The temporal model, its two baselines (same network on one month, on the mean of the
# months) and the small-data recipe are four members trained on the same folds; each gets its
# own submission; then biomass_small + the GBM member under OOF-fitted weights, and the GBM.
demo-biomass: install
	@start=$$(date +%s); set -e; \
	$(BIN)/python -m foldnet demo-data --kind biomass --out_dir $(BIO_DEMO_DIR) $(BIO_DEMO_ARGS); \
	$(BIN)/python create_tfrecords.py --data_dir $(BIO_DEMO_DIR) --n_folds 3; \
	for m in $(BIO_MODELS); do \
	  DATA_DIR=$(BIO_DEMO_DIR) MODELS=$$m RUNS_DIR=$(DEMO_RUNS) PYTHON=$(BIN)/python bash run_training.sh; \
	  DATA_DIR=$(BIO_DEMO_DIR) MODELS=$$m RUNS_DIR=$(DEMO_RUNS) PYTHON=$(BIN)/python \
	    SUBMISSION=$(BIO_DEMO_DIR)/$$m.tar bash run_inference.sh; \
	done; \
	$(BIN)/python -m foldnet baseline --data_dir $(BIO_DEMO_DIR) --run_dir $(DEMO_RUNS)/biomass_gbm; \
	$(BIN)/python -m foldnet ensemble --runs $(DEMO_RUNS)/biomass_gbm --data_dir $(BIO_DEMO_DIR) \
	  --tfrec_dir $(BIO_DEMO_DIR)/tfrec --submission $(BIO_DEMO_DIR)/biomass_gbm.tar --quiet; \
	DATA_DIR=$(BIO_DEMO_DIR) MODELS=biomass_small RUNS_DIR=$(DEMO_RUNS) PYTHON=$(BIN)/python \
	  EXTRA_RUNS=$(DEMO_RUNS)/biomass_gbm FIT_WEIGHTS=1 SUBMISSION=$(BIO_DEMO_DIR)/ensemble.tar bash run_inference.sh; \
	echo "== demo test chips vs $(BIO_DEMO_DIR)/answers (RMSE per chip, mean over chips; lower is better)"; \
	for m in $(BIO_MODELS); do \
	  $(BIN)/python -m foldnet evaluate --submission $(BIO_DEMO_DIR)/$$m.tar \
	    --answers $(BIO_DEMO_DIR)/answers --label "foldnet $$m"; \
	done; \
	$(BIN)/python -m foldnet evaluate --submission $(BIO_DEMO_DIR)/ensemble.tar \
	  --answers $(BIO_DEMO_DIR)/answers --label "foldnet ensemble biomass_small + GBM"; \
	$(BIN)/python -m foldnet evaluate --submission $(BIO_DEMO_DIR)/biomass_gbm.tar \
	  --answers $(BIO_DEMO_DIR)/answers --label "per-pixel gradient boosting"; \
	echo "== demo-biomass finished in $$(( $$(date +%s) - start )) s"

bench: install
	mkdir -p bench/out
	for b in $(BENCHES); do echo "== bench/bench_$$b.py"; $(BIN)/python bench/bench_$$b.py || exit 1; done

bench-small-data: install
	mkdir -p bench/out
	$(BIN)/python bench/bench_small_data.py

clean-demo:
	rm -rf $(DEMO_DIR) $(DEMO_RUNS)/demo $(SEG_DEMO_DIR) $(DEMO_RUNS)/seg_demo $(DEMO_RUNS)/seg_small $(DEMO_RUNS)/seg_gbm
	rm -rf $(BIO_DEMO_DIR) $(DEMO_RUNS)/biomass_demo $(DEMO_RUNS)/biomass_one_month $(DEMO_RUNS)/biomass_mean
	rm -rf $(DEMO_RUNS)/biomass_small $(DEMO_RUNS)/biomass_gbm
