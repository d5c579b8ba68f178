"""The temporal regression task (The BioMassters): the implementation of ``tasks.Task`` for it.

Records: ``temporal_records`` (T monthly images of C bands, no-data and
month masks, a target map), manifest with ``n_months``, ``shape``, ``bands``,
``norm``, ``target``, ``submission_naming``; ``chips.csv``. The spec is
``temporal_records.TemporalSpec`` (months, chip shape, bands, normalisation
constants, target name and units, submission naming), saved as
``temporal_spec.json``; ``read_spec`` of ``TFREC_DIR/temporal_spec.json``
reads it from the directory's manifest.

Inputs (``temporal_data``): ``{"image": [B, T', Hp, Wp, C], "months": [B,
T']}``, min-max normalised by the spec's ``norm`` (``band_norm`` overrides
bands), padded to a multiple of 32; ``temporal_input`` ``all`` (T' = T),
``month:K`` or ``mean`` (T' = 1: the baselines). Training: paired flips /
90-degree turns / small rotation (``aug_number``, ``aug_rotate``,
``aug_crop_scale``, as segmentation), ``month_dropout``. Model:
``temporal_unet.build_temporal_unet`` (``arch`` ``tiny`` or any registered
backbone; ``arch_options`` may hold ``decoder_filters``,
``attention_hidden`` and ``output_scale``, the rest goes to the backbone
builder; ``nonneg``). Loss: ``temporal_losses.make_loss(cfg["loss"])``
(``rmse`` per chip, default, or ``pooled_rmse``) ignoring targets above
``target_cap`` (0: no cap); Keras metrics ``chip_rmse`` and ``pooled_rmse``
at the same cap (the default monitor is ``val_chip_rmse``). TTA: the first
``tta_number + 1`` of ``views.TTA_VIEWS`` (identity, flip_lr, flip_ud,
...), each view mapped back before it is stored.

Prediction files: ``outputs`` float16 ``[n_tta, n, H, W]`` in target units
(float16 keeps 11 significant bits: a relative error of at most 2^-11, i.e.
<= 0.125 Mg/ha below 512 Mg/ha, against a competition RMSE near 28; values
are clipped to float16's range of +-65504), half the size of float32;
decoded to float32. ``labels`` float32 targets ``[n, H, W]`` (-1 where
unknown and for test chips).

Scores (``temporal_metrics``, numpy): ``rmse`` (RMSE per chip over its
pixels with a known target, then the mean over chips: the competition's
metric), ``pooled_rmse`` (over all known pixels), and both over pixels whose
target is at most 400 (the 1st place's training cap): ``rmse_capped``,
``pooled_rmse_capped``. Member weights fit ``neg_rmse`` (default) or
``neg_pooled_rmse`` (higher is better). No
post-processing is fitted. ``write_submission`` writes one float32 TIFF per
test chip (``temporal_submission``), named as the spec's submission naming;
a ``.tar`` path gives a tar.

Template (the test chips a submission must cover): ``TFREC_DIR/chips.csv``
(rows with split ``test``), or any CSV whose first column lists chip ids.
"""
import os

import numpy as np

from foldnet.core.errors import ConfigError
from foldnet.io.records import manifest_of_files
from foldnet.raster.submission import read_test_ids, refuse_csv
from foldnet.tasks import base as tasks
from foldnet.tasks.temporal import settings
from foldnet.tasks.temporal.settings import TARGET_CAP

SPEC_FILE = "temporal_spec.json"
SCORE_CAP = TARGET_CAP
MONITORS = ("val_loss", "val_chip_rmse", "val_pooled_rmse", "val_chip_rmse_uncapped")
FLOAT16_MAX = float(np.finfo(np.float16).max)
MODEL_OPTIONS = ("decoder_filters", "attention_hidden", "output_scale")


def load_spec(manifest):
    from foldnet.tasks.temporal import records as temporal_records

    return temporal_records.TemporalSpec.from_manifest(manifest)


def data_options(cfg):
    """Keyword arguments of the ``temporal_data`` pipelines for the settings ``cfg``."""
    from foldnet.tasks.temporal import data as temporal_data

    return temporal_data.options(cfg)


def model_options(cfg):
    """(temporal UNet options, backbone options) from ``cfg["arch_options"]``."""
    options = dict(cfg["arch_options"] or {})
    ours = {k: options.pop(k) for k in MODEL_OPTIONS if k in options}
    if "decoder_filters" in ours:
        ours["decoder_filters"] = tuple(int(f) for f in ours["decoder_filters"])
    return ours, options or None


def cap_of(cfg):
    cap = float(cfg["target_cap"] or 0.0)
    return cap if cap > 0 else None


def scores(targets, outputs, cap=SCORE_CAP):
    """The task's score dict for targets ``[n, H, W]`` and TTA-reduced outputs ``[n, H, W]``."""
    from foldnet.tasks.temporal import metrics as temporal_metrics

    out = temporal_metrics.scores(targets, outputs, cap)
    return {k: out[k] for k in TemporalRegressionTask.score_keys}


class TemporalRegressionTask(tasks.MapTask):
    name = "temporal_regression"
    spec_file = SPEC_FILE
    resume_keys = settings.RESUME_KEYS
    layouts = settings.LAYOUTS
    evaluate_module = settings.EVALUATE
    default_monitor = "val_chip_rmse"
    score_keys = ("rmse", "pooled_rmse", "rmse_capped", "pooled_rmse_capped")
    default_fit_metric = "neg_rmse"
    submission_name = "submission"
    averaged_name = "maps"
    score_note = (f"rmse: RMSE per chip over its pixels with a known target, then the mean over chips (the "
                  f"competition's metric); pooled_rmse: over all those pixels; *_capped: only pixels whose target "
                  f"is <= {SCORE_CAP:g}. Lower is better.")

    # -- spec
    def load_spec(self, manifest):
        return load_spec(manifest)

    def read_spec(self, path):
        from foldnet.tasks.temporal import records as temporal_records

        spec = self.manifest_spec(path)
        if spec is not None:
            return spec
        return temporal_records.TemporalSpec.load(path)

    def spec_settings(self, spec):
        return {"n_months": spec.n_months, "chip_shape": list(spec.shape), "bands": list(spec.bands)}

    def default_template(self, data_dir, tfrec_dir):
        return os.path.join(tfrec_dir or os.path.join(data_dir, "tfrec"), "chips.csv")

    # -- data
    def train_dataset(self, files, spec, cfg, *, seed, cache, drop_remainder, n_workers):
        from foldnet.tasks.temporal import data as temporal_data

        return temporal_data.train_dataset(files, spec, cfg["batch_size"], cache=cache != "none",
                                           shuffle_buffer=cfg["shuffle_buffer"], seed=seed,
                                           drop_remainder=drop_remainder, n_workers=n_workers, **data_options(cfg))

    def eval_dataset(self, files, spec, cfg):
        from foldnet.tasks.temporal import data as temporal_data

        return temporal_data.eval_dataset(files, spec, cfg["batch_size"], **data_options(cfg))

    def read_ids_targets(self, files):
        from foldnet.tasks.temporal import data as temporal_data

        return temporal_data.read_ids_targets(files, load_spec(manifest_of_files(files)))

    def predict_files(self, model, files, cfg, verbose=0):
        from foldnet.tasks.temporal import data as temporal_data

        spec = load_spec(manifest_of_files(files))
        return temporal_data.predict_maps(model, files, spec, cfg["batch_size"], self.tta_names(cfg["tta_number"]),
                                          **data_options(cfg))

    # -- model
    def check_config(self, cfg, spec):
        from foldnet.models import temporal_unet, unet
        from foldnet.tasks.temporal import data as temporal_data
        from foldnet.tasks.temporal import losses as temporal_losses

        problems = unet.arch_problems(cfg["arch"])
        ours, backbone_options = {}, None
        try:
            ours, backbone_options = model_options(cfg)
        except (TypeError, ValueError):
            pass  # reported below
        problems += unet.options_problems(cfg["arch"], {**(backbone_options or {}), **{
            k: v for k, v in (cfg["arch_options"] or {}).items() if k == "decoder_filters"}})
        checks = [lambda: temporal_losses.check_loss(cfg["loss"]),
                  lambda: temporal_data.parse_temporal_input(cfg["temporal_input"], spec.n_months),
                  lambda: self.tta_names(cfg["tta_number"]),
                  lambda: temporal_data.month_need_index(spec, cfg["month_needs"]),
                  lambda: spec.norm_arrays(data_options(cfg)["norm"])]
        for check in checks:
            try:
                check()
            except ConfigError as e:
                problems.append(str(e))
        if cfg["nonneg"] not in temporal_unet.NONNEG:
            problems.append(f"nonneg {cfg['nonneg']!r}: choose one of {', '.join(temporal_unet.NONNEG)}")
        if cfg["monitor"] not in MONITORS:
            problems.append(f"monitor {cfg['monitor']!r}: temporal regression logs {', '.join(MONITORS)}")
        try:
            ours, _ = model_options(cfg)
            float(ours.get("output_scale", 1.0))
            int(ours.get("attention_hidden") or 1)
        except (TypeError, ValueError) as e:
            problems.append(f"arch_options: {e}")
        return problems

    def input_shape(self, cfg, spec):
        from foldnet.raster import spectral
        from foldnet.tasks.temporal import data as temporal_data

        n_months = temporal_data.n_input_months(cfg["temporal_input"], spec.n_months)
        return (n_months, *spectral.padded_shape(spec.shape), spec.n_channels)

    def build_model(self, cfg, spec, weights):
        from foldnet.models import temporal_unet
        from foldnet.raster import spectral
        from foldnet.tasks.temporal import data as temporal_data

        ours, backbone_options = model_options(cfg)
        padded = list(spectral.padded_shape(spec.shape))
        n_months = temporal_data.n_input_months(cfg["temporal_input"], spec.n_months)
        return temporal_unet.build_temporal_unet(cfg["arch"], n_months, padded, spec.n_channels,
                                                 weights=weights or "none", nonneg=cfg["nonneg"],
                                                 options=backbone_options, normalize=cfg["input_norm"] != "none",
                                                 **ours)

    def compile_model(self, model, cfg, spec, optimizer):
        from foldnet.tasks.temporal import losses as temporal_losses

        cap = cap_of(cfg)
        model.compile(optimizer=optimizer, loss=temporal_losses.make_loss(cfg["loss"], cap),
                      metrics=temporal_losses.make_metrics(cap), jit_compile=bool(cfg["jit_compile"]))
        return model

    def monitor_mode(self, monitor):
        return "min"

    # -- prediction files
    def encode_outputs(self, outputs):
        return np.clip(np.asarray(outputs, np.float32), -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)

    def decode_outputs(self, stored):
        return np.asarray(stored).astype(np.float32, copy=False)

    def encode_targets(self, targets):
        return np.asarray(targets, np.float32)

    # -- scoring
    @property
    def fit_metrics(self):
        from foldnet.tasks.temporal import metrics as tm

        return {"neg_rmse": lambda t, o, s: -tm.chip_rmse(t, o),
                "neg_pooled_rmse": lambda t, o, s: -tm.pooled_rmse(t, o)}

    def score(self, targets, outputs, spec):
        return scores(np.asarray(targets), np.asarray(outputs))

    def scorer(self, spec, groups=None):
        return RMSEScorer()

    def invalid_targets(self, targets, outputs):
        targets = np.asarray(targets)
        n = len(targets)
        if targets.shape[1:] != outputs.shape[2:]:
            return np.ones(n, bool), f"target shape {targets.shape[1:]} != map shape {outputs.shape[2:]}"
        return ~np.isfinite(targets.reshape(n, -1)).all(axis=1), "non-finite target values"

    # -- submission
    def test_ids(self, template_path):
        return read_test_ids(template_path)

    def write_submission(self, ids, outputs, spec, template_path, out_path, k, post=None, values=None):
        from foldnet.tasks.temporal import submission as temporal_submission

        refuse_csv(out_path, "temporal regression")
        return temporal_submission.write_submission(out_path, ids, outputs, spec)


class RMSEScorer(tasks.Scorer):
    """``Task.scorer`` of temporal regression: per-chip sums of squared errors and valid pixel counts
    (uncapped and capped at ``SCORE_CAP``) fed block by block; memory: 4 numbers per chip. Its scores
    equal ``score`` on the concatenated rows."""

    def __init__(self):
        self.parts = {None: [], SCORE_CAP: []}

    def add(self, targets, outputs, ids=None):
        from foldnet.tasks.temporal import metrics as temporal_metrics

        for cap, parts in self.parts.items():
            parts.append(temporal_metrics.chip_errors(np.asarray(targets), np.asarray(outputs), cap))
        return self

    def merge(self, other):
        for cap in self.parts:
            self.parts[cap] += other.parts[cap]
        return self

    def _rmse(self, cap):
        from foldnet.tasks.temporal import metrics as temporal_metrics

        if not self.parts[cap]:
            return float("nan"), float("nan")
        return temporal_metrics.rmse_of_errors(np.concatenate([p[0] for p in self.parts[cap]]),
                                               np.concatenate([p[1] for p in self.parts[cap]]))

    def scores(self):
        (rmse, pooled), (rmse_c, pooled_c) = self._rmse(None), self._rmse(SCORE_CAP)
        return {"rmse": rmse, "pooled_rmse": pooled, "rmse_capped": rmse_c, "pooled_rmse_capped": pooled_c}

    def metric(self, name):
        if name not in ("neg_rmse", "neg_pooled_rmse"):
            raise ValueError(f"unknown temporal regression fit metric {name!r}")
        return -self.scores()[name[len("neg_"):]]

    def post(self, folds=None, values=None):
        return None

    def report(self, stem, title):
        return []


TASK = tasks.register(TemporalRegressionTask())
