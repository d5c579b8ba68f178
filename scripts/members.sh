# Shared by run_training.sh and run_inference.sh: which members, where their outputs go.
# Expects $here (the repository root). Sets PYTHON.
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$here/.venv/bin/python" ]; then PYTHON="$here/.venv/bin/python"; else PYTHON=python3; fi
fi

# The members trained when MODELS is not set: the Turtle Recall 5th-place ensemble.
DEFAULT_MEMBERS="ef1b7 ef1l2 ef1l2_s2 ef2l ef2xl beitl"

# Members from $MODELS, or DEFAULT_MEMBERS.
member_list() {
  echo "${MODELS:-$DEFAULT_MEMBERS}"
}

# A member name (models/NAME.yaml, e.g. cloud/b0ns_4b_30000) or a path to a YAML file (from the
# current directory or the repository root, e.g. models/cloud/b0ns_4b_30000.yaml) -> the YAML path.
member_config() {
  local m=$1
  if [ -f "$m" ]; then echo "$m"; return; fi
  if [ -f "$here/$m" ]; then echo "$here/$m"; return; fi
  if [ -f "$here/models/$m.yaml" ]; then echo "$here/models/$m.yaml"; return; fi
  echo "error: member '$m' is neither a YAML file nor models/$m.yaml" >&2
  exit 2
}

# YAML path -> RUNS_DIR/<member>, or the run dir the config itself resolves to
# (config.default_run_dir: runs/<member>/, unless it sets run_dir).
member_run_dir() {
  local cfg=$1
  if [ -n "${RUNS_DIR:-}" ]; then echo "$RUNS_DIR/$(basename "$cfg" .yaml)"; return; fi
  PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m foldnet.engine.config --config "$cfg" --print run_dir
}
