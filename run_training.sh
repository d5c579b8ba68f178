#!/usr/bin/env bash
# Train ensemble members over all folds (resumable: rerun after a kill to continue).
#
#   DATA_DIR=data MODELS="ef1b7 beitl" RUNS_DIR=runs bash run_training.sh [extra run.py flags]
#
# DATA_DIR   dataset directory (default: data); TFRecords are made in
#            TFREC_DIR (default: DATA_DIR/tfrec) if they are not there yet
# MODELS     names of configs in models/ or paths to YAML files
#            (default: the Turtle Recall members: ef1b7 ef1l2 ef1l2_s2 ef2l ef2xl beitl)
# RUNS_DIR   where each member's outputs go, as RUNS_DIR/<member>/
#            (default: runs/<member>/)
# JOB        run.py job (default: train_val_test_score)
# CONVERT_ARGS  extra create_tfrecords.py flags when the TFRecords are made here, e.g. the
#            On Cloud N 3rd place's folds: "--n_folds 4 --fold_method round_robin"
# PYTHON     interpreter (default: .venv/bin/python if present, else python3)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/scripts/members.sh"

DATA_DIR=${DATA_DIR:-data}
TFREC_DIR=${TFREC_DIR:-$DATA_DIR/tfrec}
JOB=${JOB:-train_val_test_score}

if [ ! -f "$TFREC_DIR/manifest.json" ]; then
  echo "== TFRecords: $TFREC_DIR not found, creating them from $DATA_DIR"
  # shellcheck disable=SC2086
  "$PYTHON" "$here/create_tfrecords.py" --data_dir "$DATA_DIR" --out_dir "$TFREC_DIR" ${CONVERT_ARGS:-}
fi

read -r -a members <<< "$(member_list)"  # split on white space, never globbed
for member in "${members[@]}"; do
  cfg=$(member_config "$member")
  run_dir=$(member_run_dir "$cfg")
  echo "== training $(basename "$cfg" .yaml) -> $run_dir"
  "$PYTHON" "$here/run.py" --config "$cfg" --data_dir "$DATA_DIR" --tfrec_dir "$TFREC_DIR" \
    --run_dir "$run_dir" --job "$JOB" "$@"
done
