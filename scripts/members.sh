# Shared by run_training.sh and run_inference.sh: which members, where their outputs go.
# Expects $here (the repository root). Sets PYTHON.
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$here/.venv/bin/python" ]; then PYTHON="$here/.venv/bin/python"; else PYTHON=python3; fi
fi

# Members from $MODELS, or every committed config in models/ except the demos, the
# small-photo recipe, the segmentation and the biomass recipes (the rest are the Turtle Recall ensemble).
member_list() {
  if [ -n "${MODELS:-}" ]; then
    echo "$MODELS"
  else
    for f in "$here"/models/*.yaml; do
      case "$(basename "$f")" in demo.yaml|small_photos.yaml|seg_*.yaml|kelp_*.yaml|cloud_*.yaml|biomass_*.yaml) ;; *) basename "$f" .yaml ;; esac
    done
  fi
}

# A member name (models/NAME.yaml) or a path to a YAML file -> the YAML path.
member_config() {
  local m=$1
  if [ -f "$m" ]; then echo "$m"; return; fi
  if [ -f "$here/models/$m.yaml" ]; then echo "$here/models/$m.yaml"; return; fi
  echo "error: member '$m' is neither a YAML file nor models/$m.yaml" >&2
  exit 2
}

# YAML path -> RUNS_DIR/<member>, or the run dir the config itself resolves to
# (config.default_run_dir: models/<member>/ beside the config, unless it sets run_dir).
member_run_dir() {
  local cfg=$1
  if [ -n "${RUNS_DIR:-}" ]; then echo "$RUNS_DIR/$(basename "$cfg" .yaml)"; return; fi
  PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m foldnet.engine.config --config "$cfg" --print run_dir
}
