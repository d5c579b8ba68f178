#!/usr/bin/env bash
# Predict the test set with every fold of each member (only where predictions
# are missing or stale), average over folds, TTA views and members, and write
# a validated submission.
#
#   DATA_DIR=data MODELS="ef1b7 beitl" RUNS_DIR=runs SUBMISSION=submission.csv bash run_inference.sh
#
# DATA_DIR, TFREC_DIR, MODELS, RUNS_DIR, PYTHON: as in run_training.sh
# SUBMISSION   output CSV (default: submission.csv); beside it <stem>.probs.npz
#              (averaged probabilities with ids) and <stem>.scores.md (OOF scores)
# EXTRA_RUNS   run directories already predicted that join the ensemble as members, e.g. the per-pixel
#              gradient-boosting member of a map task (foldnet baseline --method gbm --run_dir R)
# WEIGHTS      member weights, comma separated in MODELS then EXTRA_RUNS order (default: equal)
# FIT_WEIGHTS  1 to fit member weights on out-of-fold predictions (the task's fit metric; never worse
#              on OOF than the best member alone)
# FIT_METRIC   the metric FIT_WEIGHTS maximises (default: the task's; segmentation dice at 0.5, or
#              dice_best: Dice at the best threshold, the one the submission is then written at)
# OPENSET      fitted (default): the open-set rule fitted on OOF puts the new label first for
#              images that look unseen; natural: the plain new_turtle rule of the original solution
# RUN_ARGS     extra run.py flags for prediction, e.g. "--batch_size 16 --tta_number 3"
# THRESHOLD    segmentation: write the masks at this threshold (e.g. 0.5, the On Cloud N 3rd
#              place's) instead of the one fitted on the OOF blend; the scores file reports both
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/scripts/members.sh"

DATA_DIR=${DATA_DIR:-data}
TFREC_DIR=${TFREC_DIR:-$DATA_DIR/tfrec}
SUBMISSION=${SUBMISSION:-submission.csv}
RUN_ARGS=${RUN_ARGS:-}

run_dirs=()
read -r -a members <<< "$(member_list)"  # split on white space, never globbed
for member in "${members[@]}"; do
  cfg=$(member_config "$member")
  run_dir=$(member_run_dir "$cfg")
  echo "== predicting test with $(basename "$cfg" .yaml) ($run_dir)"
  # shellcheck disable=SC2086
  "$PYTHON" "$here/run.py" --config "$cfg" --data_dir "$DATA_DIR" --tfrec_dir "$TFREC_DIR" \
    --run_dir "$run_dir" --job test $RUN_ARGS
  run_dirs+=("$run_dir")
done

if [ -n "${EXTRA_RUNS:-}" ]; then
  read -r -a extra <<< "$EXTRA_RUNS"
  run_dirs+=("${extra[@]}")
fi

args=(--runs "${run_dirs[@]}" --data_dir "$DATA_DIR" --tfrec_dir "$TFREC_DIR" --submission "$SUBMISSION")
[ -n "${WEIGHTS:-}" ] && args+=("--weights=$WEIGHTS")  # one word: a value such as -1,2 is not taken for a flag
[ "${FIT_WEIGHTS:-0}" = "1" ] && args+=(--fit_weights)
[ -n "${FIT_METRIC:-}" ] && args+=("--fit_metric=$FIT_METRIC")
[ -n "${THRESHOLD:-}" ] && args+=(--threshold "$THRESHOLD")
[ -n "${OPENSET:-}" ] && args+=(--openset "$OPENSET")
echo "== ensembling ${#run_dirs[@]} member(s) -> $SUBMISSION"
"$PYTHON" -m foldnet.ensemble.cli "${args[@]}" "$@"
