#!/usr/bin/env bash
# Small-data recipes against the per-pixel gradient-boosting baseline on the harder stand-ins (issue 20):
# each section builds its stand-in, trains the small recipe (and the older demo recipe where named),
# fits the GBM member on the same folds, ensembles the UNet with it under OOF-fitted weights and scores
# every submission on the hidden true maps. The Kelp section is `make demo-seg`.
#
#   bash bench/bench_dense_small.sh [cloud] [biomass]     (from the repository root; WORK=/tmp/dense_small)
#
# PYTHON (default .venv/bin/python), WORK (scratch folder), NICE (default "nice -n 5").
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
WORK=${WORK:-/tmp/dense_small}
NICE=${NICE:-nice -n 5}
mkdir -p "$WORK"
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(cloud biomass)

member() {  # member DATA CONFIG RUN_DIR: train and predict every fold, score OOF
  $NICE "$PY" run.py --config "$2" --data_dir "$1" --run_dir "$3" --job train_val_test_score
}

ensemble() {  # ensemble DATA SUBMISSION RUN_DIR... (fitted weights when several)
  local data=$1 sub=$2; shift 2
  local fit=(); [ $# -gt 1 ] && fit=(--fit_weights)
  $NICE "$PY" -m foldnet ensemble --runs "$@" --data_dir "$data" --tfrec_dir "$data/tfrec" --submission "$sub" \
    "${fit[@]}" --quiet
}

for s in "${sections[@]}"; do
  case $s in
  cloud)  # 40 locations x 4 chips of 64 px (30 training locations, 10 test), 5 folds by location
    D=$WORK/cloud R=$WORK/runs_cloud
    "$PY" -m foldnet demo-data --kind cloud --out_dir "$D" --n_places 40 --acquisitions 4
    $NICE "$PY" create_tfrecords.py --data_dir "$D"
    member "$D" models/seg_small.yaml "$R/seg_small"
    $NICE "$PY" -m foldnet baseline --method gbm --data_dir "$D" --run_dir "$R/gbm"
    ensemble "$D" "$D/seg_small.tar" "$R/seg_small"
    ensemble "$D" "$D/gbm.tar" "$R/gbm"
    ensemble "$D" "$D/ensemble.tar" "$R/seg_small" "$R/gbm"
    echo "== cloud stand-in: test chips vs $D/answers"
    for sub in seg_small ensemble gbm; do
      printf "%-10s " "$sub"; "$PY" -m foldnet evaluate --submission "$D/$sub.tar" --answers "$D/answers" --naming cloud
    done ;;
  biomass)  # 96 training + 32 test chips of 32 px, 3 folds
    D=$WORK/biomass R=$WORK/runs_biomass
    "$PY" -m foldnet demo-data --kind biomass --out_dir "$D" --n_train 96 --n_test 32
    $NICE "$PY" create_tfrecords.py --data_dir "$D" --n_folds 3
    member "$D" models/biomass_small.yaml "$R/biomass_small"
    member "$D" models/biomass_demo.yaml "$R/biomass_demo"
    $NICE "$PY" -m foldnet baseline --data_dir "$D" --run_dir "$R/gbm"
    for m in biomass_small biomass_demo gbm; do ensemble "$D" "$D/$m.tar" "$R/$m"; done
    ensemble "$D" "$D/ensemble.tar" "$R/biomass_small" "$R/gbm"
    echo "== biomass stand-in: test chips vs $D/answers (RMSE per chip; lower is better)"
    "$PY" - "$D" <<'PYEOF'
import glob, os, sys
import numpy as np, tifffile
from foldnet.tasks.temporal import metrics
d = sys.argv[1]
train = np.concatenate([tifffile.imread(f).ravel() for f in glob.glob(os.path.join(d, "train_agbm", "*.tif"))])
mean = float(train[(train >= 0) & (train <= 400)].mean())
answers = sorted(glob.glob(os.path.join(d, "answers", "*.tif")))
truth = np.stack([tifffile.imread(f) for f in answers])
print(f"training mean ({mean:.1f} Mg/ha): RMSE per chip "
      f"{metrics.scores(truth, np.full_like(truth, mean), metrics.DEFAULT_CAP)['rmse']:.2f}")
PYEOF
    for m in biomass_small biomass_demo ensemble gbm; do
      "$PY" -m foldnet evaluate --submission "$D/$m.tar" --answers "$D/answers" --label "$m"
    done ;;
  *) echo "unknown section $s (cloud, biomass)" >&2; exit 2 ;;
  esac
done
