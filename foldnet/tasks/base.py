"""The task seam: everything that depends on what is predicted, behind one interface.

The machinery (``runner``, ``train``, ``predict``, ``scores``, ``ensemble``,
``rundir``) knows folds, checkpoints, resume, TTA counts, file formats and
weighted averages; it never knows what a record holds, what the model
outputs or how a submission looks. It asks the run's task, chosen by the
manifest's ``"task"`` field (``for_manifest``; absent = ``"classification"``).

Adding a task is adding a folder ``foldnet/tasks/<name>/`` with a ``settings.py``
(its settings as ``core.settings.Setting`` entries, resume keys, layouts, converter,
demo kinds, evaluate and baseline commands: no TensorFlow) and a ``task.py`` that
defines a ``Task`` subclass and calls ``register`` on an instance, plus one line in
``TASKS`` below. Nothing else changes (tests/tasks/test_toy_task.py registers a task
from a test file and trains, scores and submits it). The classification task
(``foldnet/tasks/classification/task.py``) is the worked example.

Words used below
----------------
cfg
    The settings of ``run.py``: a frozen, validated ``config.Config`` (reads
    as a mapping: ``cfg["dim"]``; ``cfg.aug`` is the augmentation object,
    ``cfg["arch_options"]`` the builder options). Tasks read the keys they
    need (``dim``, ``batch_size``, ``tta_number``, ``arch``, ``dropout``,
    ``label_smoothing``, ...); a task's own settings are declared in its
    ``settings.py`` (``SETTINGS``), the shared ones in ``engine.config``.
    Helpers outside ``run.py`` (benches) may pass a plain dict with the keys
    the method reads.
spec
    What the outputs mean, shared by every fold and member of an ensemble
    (classification: the ``LabelMap``). Any object with ``fingerprint() ->
    str``, ``save(path)`` and ``==``. Its fingerprint is stored in every
    prediction file (key ``label_map_fingerprint``, kept for old files) and
    members whose specs differ are never averaged.
outputs
    A model's predictions for one split as a float32 array ``[n_tta, n,
    *item_shape]``; view 0 is the identity view and every view is already
    mapped back to the identity frame (for maps: inverse TTA applied), so the
    machinery may average over axis 0. classification: ``[n_tta, n, C]``
    probabilities; segmentation: ``[n_tta, n, H, W]`` probability maps.
targets
    The true values of the rows, ``[n, *target_shape]`` (classification:
    int64 class indices, -1 for test rows; segmentation: uint8 masks).

What a task provides (attributes and methods of ``Task``)
--------------------------------------------------------
Identity and spec

- ``name``: the manifest's ``task`` value.
- ``spec_file``: file name of the spec in a run directory (``label_map.json``).
- ``load_spec(manifest)``: the spec of a TFRecord directory.
- ``read_spec(path)``: a spec saved with ``spec.save(path)``.
- ``spec_settings(spec)``: dict of the spec's values that fix the model's
  structure (classification: ``{"n_classes": C}``); stored with a fold's
  settings so a resume with another spec is refused.

Run

- ``prepare_run(manifest, cfg)``: writes what all folds of a run share into
  ``cfg["run_dir"]`` once, after every check and under the run-dir lock,
  before any fold trains or predicts (segmentation: ``index_ranges.json``
  when the records carry no index statistics). Default: nothing. The dataset
  builders below only read such files: they never write.

Records and tf.data (all datasets made of core TF ops, static shapes)

- ``cache_mode(cfg, n_examples, encoded_mb)``: what ``train_dataset``
  caches: ``cfg["cache"]`` unless it is ``auto``, which the task resolves
  from the sizes it knows (default: ``encoded`` if the record bytes fit in
  ``cfg["cache_budget_mb"]``, else ``none``).
- ``train_dataset(files, spec, cfg, *, seed, cache, drop_remainder, n_workers)``:
  endless shuffled, augmented batches ``(x, y)`` for ``model.fit``.
- ``eval_dataset(files, spec, cfg)``: deterministic batches ``(x, y)`` for
  validation during fit.
- ``read_ids_targets(files)``: ``(ids list[str], targets ndarray)`` in file
  order, without decoding inputs.
- ``predict_files(model, files, cfg, verbose=0)``: ``outputs`` of the records
  of ``files`` in file order, every TTA view in one pass over the data, views
  merged to the identity frame (``cfg["tta_number"] + 1`` views).
- ``tta_names(tta_number)``: names of the views, identity first.

Model

- ``check_config(cfg, spec)``: list of problems of the settings for this task
  and spec that the generic validation (``config``) cannot see (e.g. an
  unknown architecture); the runner raises them as one ConfigError before
  any model is built.
- ``build_model(cfg, spec, weights)``: the Keras model (input pipeline
  contract of the task, head and output activation; float32 outputs under
  mixed precision). ``weights`` overrides ``cfg["weights"]`` (None when a
  checkpoint is loaded afterwards).
- ``compile_model(model, cfg, spec, optimizer)``: loss and Keras metrics.
- ``default_monitor``: the ``--monitor`` a recipe of this task would use.
- ``default_select`` / ``default_min_epochs_share``: what ``--select auto`` and
  ``--min_epochs -1`` mean for the task (engine.train.selection).
- ``monitor_mode(monitor)``: ``"min"`` or ``"max"``.

Prediction files (``rundir`` writes and reads them; the task says how its
arrays are stored)

- ``encode_outputs(outputs)``: the array stored under ``outputs`` (e.g.
  float32 as is, or uint8-quantised maps). Must keep axes ``[n_tta, n, ...]``.
- ``decode_outputs(stored)``: back to float32 (any leading block of rows, so
  the ensemble can stream).
- ``encode_targets(targets)``: the array stored under ``labels``.

Scoring (no TensorFlow; light processes)

- ``score_keys``: names of the scores ``score`` returns, in table order.
- ``score(targets, outputs, spec)``: dict of ``score_keys`` for one ``[n,
  ...]`` (TTA-reduced) output array.
- ``fit_metrics``: dict ``name -> f(targets, outputs, spec) -> float``
  (higher is better) usable to fit member weights; ``default_fit_metric``.
- ``invalid_targets(targets, outputs)``: ``(bad, reason)``: bool ``[n]`` of
  OOF rows that cannot be scored given their decoded ``[n_tta, n, ...]``
  outputs, and a phrase naming the problem (classification: label outside
  ``[0, C)``).
- ``score_note``: one Markdown sentence explaining the score columns.
- ``fit_post(targets, outputs, spec, folds=None)``: post-processing
  parameters fitted on OOF outputs (``folds``: each row's fold; passed only
  to tasks with a ``post_file``, so ``fit_post(targets, outputs, spec)`` of
  other tasks keeps working),
  as a small JSON-able dict such as ``{"threshold": 0.48}``, or None.
  segmentation: the Dice threshold; classification: the open-set rule
  (``openset.fit_rule``). Fitted on the ensemble's OOF blend (final member
  weights), reported in the ensemble's scores.md (``post_markdown``) and
  passed to ``write_submission``.
- ``post_file``: file name in a run directory where the score job saves the
  member's own ``fit_post`` (None: not saved; classification:
  ``openset_rule.json``). When set, the ensemble fits ``post`` only if every
  scored member has that file (run directories written before it keep
  their old submissions).
- ``post_markdown(post)``: a Markdown section about ``post`` (default: none).
- ``post_plot(post, path, title)``: a PNG about ``post`` at ``path`` (the
  score job: ``RUN_DIR/<post_plot_name>``; the ensemble: beside its
  submission), or None (default: none; classification: the known vs new
  trade-off curve of the open-set rule).
- ``describe_post(post)``: one line about ``post`` (default: ``key = value``
  pairs).
- ``row_value_key`` / ``row_values(model, files, reference_files, cfg,
  cache)``: an extra per-row array the prediction files store under that key
  when ``--openset_features`` is on (classification: cosine similarity to the
  nearest training image of the fold, ``reference_files``; ``cache`` is one
  dict per fold). The score job and the ensemble average it like the outputs
  (``rundir.row_values``) and pass it to ``fit_post(..., values=)`` and
  ``write_submission(..., values=)`` (default key None: nothing stored).
  ``sim_value_key``: a second per-row array ``row_values`` returns, for
  fitting only (classification: the same similarity with the row's own
  individual left out); passed to ``fit_post(..., others=)``.
  ``row_values_default(spec)``: whether ``openset_features: auto`` stores
  them (classification: when some class answers the new label).

Streaming scores (the score job and the ensemble never hold all OOF outputs)

- ``scorer(spec, groups=None)``: an accumulator with ``add(targets, outputs,
  ids)`` (one block of TTA-reduced ``[b, ...]`` rows; called block after
  block), ``scores()`` (the dict ``score`` would return for all rows added),
  ``metric(name)`` (a ``fit_metrics`` value), ``post(folds=None)``
  (``fit_post``; ``folds`` {id: fold} only for tasks with a ``post_file``),
  ``report(stem, title)`` (``report``) and ``merge(other)`` (add another
  scorer's rows, as if added here after this one's). ``groups``: {id: group} of the rows
  (e.g. tiles.csv locations) or None. Default (``CollectScorer``): keeps the
  blocks and calls ``score`` / ``fit_post`` / ``report`` on them, right for
  small outputs such as class probabilities; segmentation accumulates counts.
- ``groups(tfrec_dir)``: {id: group} for ``scorer`` from a TFRecord
  directory, or None (default).

Reports (optional)

- ``report(stem, targets, outputs, title)``: extra files about TTA-reduced
  OOF outputs (segmentation: Dice-vs-threshold table ``stem.threshold.md``
  and PNG), written by the score job for all folds' TTA-mean OOF outputs
  (stem ``RUN_DIR/oof``); returns the paths (default: none).

Submission

- ``submission_name``: file name of the ``subm`` job's output in the run dir.
- ``averaged_name``: the ensemble's averaged outputs go beside the submission as
  ``<stem>.<averaged_name>.npz`` (``probs`` for probabilities; temporal regression:
  ``maps``, biomass maps are not probabilities).
- ``default_template(data_dir, tfrec_dir)``: the template when none is given
  (classification: ``DATA_DIR/sample_submission.csv``).
- ``test_ids(template_path)``: the ids a submission must cover, in the
  submission's order (classification: the template CSV's first column).
- ``write_submission(ids, outputs, spec, template_path, out_path, k, post)``:
  turn the ensemble's averaged ``[n, ...]`` outputs (and ``post`` from
  ``fit_post``, None if nothing was fitted) into the competition's files,
  validated before they are written (atomic); returns a short description.
  classification: CSV with the top-k labels under the new-individual rule.
"""
import abc
import importlib
import os
from typing import Any

import numpy as np

from foldnet.core.errors import ConfigError

DEFAULT_TASK = "classification"

# task name -> its package: ``<package>.task`` registers the Task when imported, ``<package>.settings``
# declares its settings (SETTINGS, RESUME_KEYS) without importing TensorFlow. One line per task.
TASKS = {
    "classification": "foldnet.tasks.classification",
    "segmentation": "foldnet.tasks.segmentation",
    "temporal_regression": "foldnet.tasks.temporal",
}

_REGISTRY: dict[str, "Task"] = {}


class Scorer(abc.ABC):
    """Scores of prediction blocks fed one by one (``add``), mergeable across members and folds."""

    @abc.abstractmethod
    def add(self, targets: Any, outputs: Any, ids: Any = None) -> "Scorer": ...

    @abc.abstractmethod
    def merge(self, other: "Scorer") -> "Scorer": ...

    @abc.abstractmethod
    def scores(self) -> dict[str, float]: ...

    @abc.abstractmethod
    def metric(self, name: str) -> float: ...

    def post(self, folds: dict | None = None, values: dict | None = None) -> dict | None:
        """The post-processing fitted on what was added (``Task.fit_post``); None by default."""
        return None

    def report(self, stem: str, title: str) -> list[str]:
        """Files written about the added blocks (e.g. a threshold curve); none by default."""
        return []


class Task(abc.ABC):
    """Base class of a task; see the module doc for what each member must do. The abstract methods
    are the seam every task implements; the others have defaults a task may override."""

    name: str = ""
    spec_file: str = ""
    default_monitor = "val_loss"
    default_select = "best"
    default_min_epochs_share = 0.0
    score_keys: tuple[str, ...] = ()
    default_fit_metric: str | None = None
    score_note = ""
    submission_name = "submission.csv"
    averaged_name = "probs"
    # settings a resumed fold must share with its interrupted run, beyond the shared ones (engine.train)
    resume_keys: tuple[str, ...] = ()
    # dataset layouts this task converts (create_tfrecords.py --layout), the first one its default
    layouts: tuple[str, ...] = ()
    # demo datasets (foldnet demo-data --kind K): kind -> "module:function(out_dir, **options)"
    demo_kinds: dict[str, str] = {}
    # module whose main(argv) scores a submission against answers (foldnet evaluate)
    evaluate_module: str = ""
    post_file: str | None = None
    row_value_key: str | None = None
    sim_value_key: str | None = None
    post_plot_name: str | None = None

    # -- spec
    @abc.abstractmethod
    def load_spec(self, manifest: dict) -> Any: ...

    @abc.abstractmethod
    def read_spec(self, path: str) -> Any: ...

    def manifest_spec(self, path: str) -> Any:
        """The spec of the TFRecord directory of ``path`` when ``path`` does not exist but a
        ``manifest.json`` sits beside it (TFRecord directories hold no spec file), else None."""
        if os.path.exists(path):
            return None
        from foldnet.io.records import manifest_at

        manifest = manifest_at(os.path.dirname(path))
        return None if manifest is None else self.load_spec(manifest)

    def spec_settings(self, spec: Any) -> dict:
        return {}

    # -- conversion
    def detect_layout(self, data_dir: str) -> str | None:
        """The layout of this task that ``data_dir``'s files show (None: not recognised)."""
        return None

    def convert(self, layout: str, flags: dict) -> dict:
        """create_tfrecords.py for ``layout`` with the command line's ``flags``; returns the manifest."""
        raise ConfigError(f"the {self.name} task has no converter")

    # -- run
    def prepare_run(self, manifest: dict, cfg: Any) -> None:
        """Write what every fold of this run must share into ``cfg["run_dir"]`` (called once per run,
        after every check passed and with the run dir locked, before any fold trains or predicts).
        Dataset builders only read it back: they never write."""

    # -- data
    def cache_mode(self, cfg: Any, n_examples: int, encoded_mb: float) -> str:
        if cfg["cache"] != "auto":
            return cfg["cache"]
        return "encoded" if encoded_mb <= cfg["cache_budget_mb"] else "none"

    def input_shape(self, cfg: Any, spec: Any) -> tuple[int, ...]:
        """Shape of one example as the model gets it (float32), for the memory preflight."""
        return (cfg["dim"], cfg["dim"], 3)

    @abc.abstractmethod
    def train_dataset(self, files: list[str], spec: Any, cfg: Any, *, seed: int, cache: str, drop_remainder: bool,
                      n_workers: int) -> Any: ...

    @abc.abstractmethod
    def eval_dataset(self, files: list[str], spec: Any, cfg: Any) -> Any: ...

    @abc.abstractmethod
    def read_ids_targets(self, files: list[str]) -> tuple[Any, Any]: ...

    @abc.abstractmethod
    def predict_files(self, model: Any, files: list[str], cfg: Any, verbose: int = 0) -> Any: ...

    @abc.abstractmethod
    def tta_names(self, tta_number: int) -> list[str]: ...

    # -- model
    def check_config(self, cfg: Any, spec: Any) -> list[str]:
        return []

    @abc.abstractmethod
    def build_model(self, cfg: Any, spec: Any, weights: str | None) -> Any: ...

    @abc.abstractmethod
    def compile_model(self, model: Any, cfg: Any, spec: Any, optimizer: Any) -> None: ...

    def monitor_mode(self, monitor: str) -> str:
        return "min" if "loss" in monitor else "max"

    # -- prediction files
    def encode_outputs(self, outputs: Any) -> Any:
        return outputs

    def decode_outputs(self, stored: Any) -> Any:
        return stored

    def encode_targets(self, targets: Any) -> Any:
        return targets

    # -- scoring
    @property
    def fit_metrics(self) -> dict:
        return {}

    @abc.abstractmethod
    def score(self, targets: Any, outputs: Any, spec: Any) -> dict[str, float]: ...

    @abc.abstractmethod
    def invalid_targets(self, targets: Any, outputs: Any) -> Any: ...

    def row_values(self, model: Any, files: list[str], reference_files: list[str], cfg: Any, cache: Any) -> dict:
        return {}

    def row_values_default(self, spec: Any) -> bool:
        return False

    def fit_post(self, targets: Any, outputs: Any, spec: Any, folds: Any = None, values: Any = None,
                 others: Any = None) -> dict | None:
        return None

    def post_markdown(self, post: dict) -> str:
        return ""

    def post_plot(self, post: dict, path: str, title: str = "") -> str | None:
        return None

    def describe_post(self, post: dict) -> str:
        return ", ".join(f"{k} = {v}" for k, v in post.items())

    def report(self, stem: str, targets: Any, outputs: Any, title: str) -> list[str]:
        return []

    def scorer(self, spec: Any, groups: Any = None) -> Scorer:
        return CollectScorer(self, spec)

    def groups(self, tfrec_dir: str | None) -> Any:
        return None

    # -- submission
    def default_template(self, data_dir: str, tfrec_dir: str | None) -> str:
        return os.path.join(data_dir, "sample_submission.csv")

    @abc.abstractmethod
    def test_ids(self, template_path: str) -> Any: ...

    @abc.abstractmethod
    def write_submission(self, ids: Any, outputs: Any, spec: Any, template_path: str, out_path: str, k: int,
                         post: dict | None = None, values: Any = None) -> str: ...

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class MapTask(Task):
    """A task whose outputs are per-pixel maps of raster tiles (segmentation, temporal regression):
    what such tasks share beyond ``Task``."""

    # small map sets validate on few, unrepresentative locations (issue 20: a leave-one-sensor-out
    # fold's best epoch was epoch 1): select on a smoothed curve, never in the first quarter
    default_select = "smoothed"
    default_min_epochs_share = 0.25

    def tta_names(self, tta_number: int) -> list[str]:
        """The map views of the one vocabulary (core.transforms.MAP_VIEWS), identity first."""
        from foldnet.core.transforms import map_views

        return map_views(tta_number)


class CollectScorer(Scorer):
    """Default ``Task.scorer``: keeps the added blocks and scores their concatenation."""

    def __init__(self, task, spec):
        self.task, self.spec = task, spec
        self._targets, self._outputs, self._ids = [], [], []

    def add(self, targets, outputs, ids=None):
        self._targets.append(np.asarray(targets))
        self._outputs.append(np.asarray(outputs))
        self._ids.append(None if ids is None else np.asarray(ids).astype(str))
        return self

    def merge(self, other):
        self._targets += other._targets
        self._outputs += other._outputs
        self._ids += other._ids
        return self

    def _all(self):
        return np.concatenate(self._targets), np.concatenate(self._outputs)

    def scores(self):
        return self.task.score(*self._all(), self.spec)

    def metric(self, name):
        return self.task.fit_metrics[name](*self._all(), self.spec)

    def post(self, folds=None, values=None, others=None):
        """``fit_post``; with ``folds`` ({id: fold}, tasks with a ``post_file``) each row's fold too, with
        ``values`` ({id: value}, tasks with a ``row_value_key``) each row's stored value, and with
        ``others`` ({id: value}, tasks with a ``sim_value_key``) its stored simulation value."""
        if folds is None:
            return self.task.fit_post(*self._all(), self.spec)
        ids = [i for block in self._ids for i in block]
        kw = {"folds": np.array([folds[i] for i in ids])}
        if values is not None:
            kw["values"] = np.array([values[i] for i in ids])
        if others is not None:
            kw["others"] = np.array([others[i] for i in ids])
        return self.task.fit_post(*self._all(), self.spec, **kw)

    def report(self, stem, title):
        return self.task.report(stem, *self._all(), title)


def register(task: Task) -> Task:
    """Add ``task`` (a Task instance) to the registry under ``task.name``; returns it."""
    if not isinstance(task, Task) or not task.name:
        raise TypeError(f"register expects a named Task instance, got {task!r}")
    _REGISTRY[task.name] = task
    return task


def names():
    """Names of the tasks foldnet knows (registered or importable)."""
    return sorted(set(TASKS) | set(_REGISTRY))


def settings_module(name):
    """The ``settings`` module of task ``name`` (light: no TensorFlow)."""
    return importlib.import_module(TASKS[name] + ".settings")


def all_settings():
    """Every task's own settings (``core.settings.Setting``), in registry order; ValueError if two
    tasks declare one name with different definitions."""
    found = {}
    for name in TASKS:
        for setting in settings_module(name).SETTINGS:
            if found.setdefault(setting.name, setting) != setting:
                raise ValueError(f"setting {setting.name!r} is declared twice with different definitions")
    return list(found.values())


def get(name: str | None) -> Task:
    """The registered task ``name`` (its module is imported on first use); ConfigError if unknown."""
    name = name or DEFAULT_TASK
    if name not in _REGISTRY and name in TASKS:
        importlib.import_module(TASKS[name] + ".task")
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(names())}")
    return _REGISTRY[name]


def for_manifest(manifest: dict) -> Task:
    """The task of a TFRecord directory (its manifest's ``task`` field)."""
    return get(manifest.get("task") or DEFAULT_TASK)
