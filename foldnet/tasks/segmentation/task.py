"""The segmentation task (Kelp Wanted, On Cloud N): the implementation of ``tasks.Task`` for it.

Records: ``seg_records`` (raw bands, mask, valid mask, group), manifest with
``image``, ``band_stats`` and ``index_stats``, ``tiles.csv``. Inputs: ``spectral.Features``
(settings ``seg_bands``, ``indices``, ``norm``, ``mask_indices``; an index with
statistics in the manifest (computed by the converter over every training tile)
is scaled by them as the Kelp Wanted winner; for an older manifest, index ranges
without a natural range are fitted once on the first 64 training tiles in file
order, unsupervised like the manifest's band statistics, and stored in the run
dir as ``index_ranges.json`` so prediction uses the training values) padded to a multiple
of 32. Training: ``seg_data.train_dataset`` with paired augmentation (see
``augment_options``), the weighted tile sampler (``sampler``: terms of
``tiles.csv``) and ``tiles_per_epoch``. Model: ``unet.build_unet`` (``arch``
``tiny`` or a registered backbone; ``arch_options`` may hold
``decoder_filters``, the rest goes to the backbone builder), float32 sigmoid
``[B, Hp, Wp, 1]``. Loss: ``seg_losses.make_loss(cfg["loss"] or "dice")``;
Keras metrics ``dice``, ``iou`` and, with ``monitor: val_location_iou``,
``location_iou`` over the groups of ``tiles.csv`` (the target then carries
the group channel). TTA: the first
``tta_number + 1`` of ``views.TTA_VIEWS`` (identity, flip_lr, flip_ud,
rot90, ...), each view mapped back before it is stored.

Prediction files: ``outputs`` uint8 ``[n_tta, n, H, W]`` (probability x 255,
rounded; decoded as value / 255, the ``seg_metrics`` convention), ``labels``
uint8 masks ``[n, H, W]`` (zeros for test tiles). Scores (pooled over all
pixels of all tiles, as the competitions score): ``dice`` and ``iou`` at 0.5,
``location_iou`` when tiles.csv names groups (``groups``), ``dice_best`` at
the threshold ``threshold`` that maximises OOF Dice; all accumulated tile
block by tile block (``SegScorer`` over ``seg_metrics.Scores``), so the score
job and the ensemble stream OOF maps of any size. ``fit_post``: that threshold on the
ensemble's OOF blend; ``write_submission`` thresholds with it (0.5 without
OOF) and writes one uint8 TIFF per test tile (``seg_submission``) named as
the manifest's ``submission_naming``; a ``.tar`` path gives a tar.

The spec (``SegSpec``) is what the outputs mean: tile shape, band names,
layout and submission naming; saved as ``seg_spec.json``. A TFRecord
directory has no such file; ``read_spec`` of ``TFREC_DIR/seg_spec.json``
reads the spec from the directory's manifest.json instead.

Template (the test tiles a submission must cover): ``TFREC_DIR/tiles.csv``
(rows with split ``test``), or any CSV whose first column lists tile ids.
"""
import json
import math
import os

import numpy as np

from foldnet.core import fileio
from foldnet.core.errors import ConfigError, DataError
from foldnet.io.records import manifest_at, manifest_of_files
from foldnet.raster.spectral import PAD_MULTIPLE
from foldnet.raster.submission import read_test_ids, refuse_csv
from foldnet.tasks import base as tasks
from foldnet.tasks.segmentation import metrics as seg_metrics
from foldnet.tasks.segmentation import settings

SPEC_FILE = "seg_spec.json"
INDEX_FIT_TILES = 64
INDEX_RANGES_FILE = "index_ranges.json"  # in the run dir: the ranges training used
DEFAULT_LOSS = "dice"
EMPTY_LOCATION = {"one": 1.0, "zero": 0.0}  # setting location_iou_empty -> the IoU of an empty location


class SegSpec:
    """What a segmentation member's outputs mean (see module doc)."""

    def __init__(self, shape, bands, layout, naming):
        self.shape = [int(s) for s in shape]          # [H, W, C] of the raw tiles
        self.bands = [str(b) for b in bands]
        self.layout = str(layout)
        self.naming = str(naming)                       # e.g. "{id}_kelp.tif"

    def to_dict(self):
        return {"task": "segmentation", "shape": self.shape, "bands": self.bands, "layout": self.layout,
                "naming": self.naming}

    @classmethod
    def from_manifest(cls, manifest):
        image = manifest.get("image") or {}
        missing = [k for k in ("shape", "bands") if k not in image]
        if missing or "submission_naming" not in manifest:
            raise DataError(f"manifest of {manifest.get('dir')} is not a segmentation manifest",
                            [f"missing image.{k}" for k in missing]
                            + ([] if "submission_naming" in manifest else ["missing submission_naming"]))
        return cls(image["shape"], image["bands"], manifest.get("layout", "seg"), manifest["submission_naming"])

    def fingerprint(self):
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path):
        fileio.atomic_write_json(path, self.to_dict())

    def __eq__(self, other):
        return isinstance(other, SegSpec) and other.to_dict() == self.to_dict()

    def __repr__(self):
        return f"SegSpec({self.to_dict()})"


def augment_options(cfg):
    """``views.paired_augment`` options from the shared augmentation settings:
    aug_number >= 1 flips, >= 3 also 90-degree turns (core.transforms.DIHEDRAL order: identity,
    flip_lr, flip_ud, rot90, ...); aug_crop_scale: zoom 1/(1+x)..(1+x) and shift x/2;
    aug_rotate: small rotation in degrees; map_aug: the paired affine / photometric /
    elastic / cutout maps (``views.paired_augment``)."""
    aug = cfg.aug if hasattr(cfg, "aug") else None
    number = aug.number if aug else cfg["aug_number"]
    crop = aug.crop_scale if aug else cfg["aug_crop_scale"]
    rotate = aug.rotate if aug else cfg["aug_rotate"]
    return {"flip": number >= 1, "rot90": number >= 3, "scale": float(crop), "shift": float(crop) / 2,
            "rotate": float(rotate), "map_aug": dict(cfg["map_aug"] or {})}


class SegmentationTask(tasks.MapTask):
    name = "segmentation"
    spec_file = SPEC_FILE
    resume_keys = settings.RESUME_KEYS
    layouts = settings.LAYOUTS
    evaluate_module = settings.EVALUATE
    default_monitor = "val_dice"
    score_keys = ("dice", "iou", "location_iou", "location_iou_empty0", "dice_best", "threshold")
    default_fit_metric = "dice"
    submission_name = "submission"
    score_note = ("dice/iou: pooled over all pixels of all tiles at threshold 0.5; location_iou (when tiles.csv "
                  "names groups): per location sum of intersections / sum of unions at 0.5, then the mean over "
                  "locations, a location without true or predicted pixels counting 1 (location_iou_empty0: 0, "
                  "the On Cloud N 3rd place's convention); dice_best: the best pooled Dice over thresholds 0.05..0.95, reached at threshold.")

    # -- spec
    def load_spec(self, manifest):
        return SegSpec.from_manifest(manifest)

    def read_spec(self, path):
        spec = self.manifest_spec(path)
        if spec is not None:
            return spec
        d = fileio.read_json(path)
        return SegSpec(d["shape"], d["bands"], d["layout"], d["naming"])

    def spec_settings(self, spec):
        return {"tile_shape": list(spec.shape)}

    def default_template(self, data_dir, tfrec_dir):
        return os.path.join(tfrec_dir or os.path.join(data_dir, "tfrec"), "tiles.csv")

    # -- run
    def prepare_run(self, manifest, cfg):
        """Fit the ranges of the indices the records carry no statistics for (records written before
        conversions stored ``index_stats``) on the first training tiles, once per run, and store them
        as ``index_ranges.json``: every fold and every later prediction (maybe another process, other
        TFRecords) reads them back (``features``). Kept when already stored for these indices."""
        path = os.path.join(cfg["run_dir"], INDEX_RANGES_FILE) if cfg["run_dir"] else None
        if not path or (os.path.exists(path) and
                        self._stored_index_ranges(cfg["run_dir"], self._unscaled_indices(manifest, cfg)) is not None):
            return
        fileio.atomic_write_json(path,
                                 {n: list(r) for n, r in self._fit_index_ranges(manifest, cfg).items()})

    # -- features
    def features(self, manifest, cfg):
        """The input features of ``manifest``'s records under ``cfg`` (reads only: index scaling
        from the records' statistics, else from the run's ``index_ranges.json`` (``prepare_run``),
        else -- no run dir -- fitted here in memory)."""
        ranges = self._stored_index_ranges(cfg["run_dir"], self._unscaled_indices(manifest, cfg))
        if ranges is None:
            ranges = self._fit_index_ranges(manifest, cfg)
        return self._build_features(manifest, cfg, ranges)

    @staticmethod
    def _build_features(manifest, cfg, ranges):
        from foldnet.raster import spectral
        from foldnet.tasks.segmentation import data as seg_data

        indices = list(cfg["indices"] or [])
        stats = seg_data.manifest_index_stats(manifest, indices, cfg["mask_indices"])
        return spectral.Features(manifest, bands=cfg["seg_bands"], indices=indices, norm=cfg["norm"],
                                 index_ranges=ranges, mask_indices=cfg["mask_indices"], norm_max=cfg["norm_max"],
                                 norm_output=cfg["norm_output"], index_stats=stats)

    @staticmethod
    def _unscaled_indices(manifest, cfg):
        """The configured indices without a natural range that the records carry no statistics for."""
        from foldnet.raster import spectral
        from foldnet.tasks.segmentation import data as seg_data

        indices = list(cfg["indices"] or [])
        stats = seg_data.manifest_index_stats(manifest, indices, cfg["mask_indices"])
        return [n for n in indices if n not in stats and not spectral.INDICES[n].natural]

    def _fit_index_ranges(self, manifest, cfg):
        from foldnet.io import records
        from foldnet.tasks.segmentation import data as seg_data

        files = records.fold_files(manifest, range(manifest["n_folds"]))
        return seg_data.fit_index_ranges(files, self._build_features(manifest, cfg, None), n_tiles=INDEX_FIT_TILES)

    @staticmethod
    def _stored_index_ranges(run_dir, needed):
        """The ranges stored for this run (``run_dir``/index_ranges.json) if they cover ``needed``
        ({} when nothing is needed), else None."""
        if not needed:
            return {}
        path = os.path.join(run_dir, INDEX_RANGES_FILE) if run_dir else None
        if not path or not os.path.exists(path):
            return None
        stored = fileio.read_json(path)
        if not set(needed) <= set(stored):
            return None
        return {n: tuple(float(v) for v in stored[n]) for n in needed}

    def _group_index(self, manifest, cfg):
        """{group: index} when the location-weighted IoU is monitored, else None."""
        from foldnet.tasks.segmentation import data as seg_data

        if cfg["monitor"] != "val_location_iou":
            return None
        tiles = seg_data.read_tiles_csv(manifest)
        groups = seg_data.group_index(tiles)
        return groups

    # -- data
    def cache_mode(self, cfg, n_examples, encoded_mb):
        mode = super().cache_mode(cfg, n_examples, encoded_mb)
        return "none" if mode == "none" else "encoded"

    def train_dataset(self, files, spec, cfg, *, seed, cache, drop_remainder, n_workers):
        from foldnet.tasks.segmentation import data as seg_data

        manifest = manifest_of_files(files)
        features = self.features(manifest, cfg)
        ids = weights = None
        if cfg["sampler"] or cfg["max_positive_share"] < 1.0:
            tiles = seg_data.read_tiles_csv(manifest)
            names = {os.path.basename(f) for f in files}
            folds = [p["fold"] for p in manifest["folds"] if names & set(p["files"])]
            ids, weights = seg_data.sampler_weights(tiles, folds, cfg["sampler"] or {},
                                                    max_positive_share=cfg["max_positive_share"])
        return seg_data.train_dataset(files, features, cfg["batch_size"], tile_ids=ids, weights=weights,
                                      augment=augment_options(cfg), cache=cache != "none",
                                      shuffle_buffer=cfg["shuffle_buffer"], pad_multiple=PAD_MULTIPLE,
                                      group_index=self._group_index(manifest, cfg), seed=seed, n_workers=n_workers)

    def eval_dataset(self, files, spec, cfg):
        from foldnet.tasks.segmentation import data as seg_data

        manifest = manifest_of_files(files)
        return seg_data.eval_dataset(files, self.features(manifest, cfg), cfg["batch_size"],
                                     pad_multiple=PAD_MULTIPLE, group_index=self._group_index(manifest, cfg))

    def read_ids_targets(self, files):
        from foldnet.raster import spectral
        from foldnet.tasks.segmentation import data as seg_data

        manifest = manifest_of_files(files)
        features = spectral.Features(manifest, jit_compile=False)
        ids, masks, _, _ = seg_data.read_tiles(files, features)
        return ids, masks

    def predict_files(self, model, files, cfg, verbose=0):
        from foldnet.tasks.segmentation import data as seg_data

        manifest = manifest_of_files(files)
        return seg_data.predict_maps(model, files, self.features(manifest, cfg), cfg["batch_size"],
                                     self.tta_names(cfg["tta_number"]), PAD_MULTIPLE)

    # -- model
    def check_config(self, cfg, spec):
        from foldnet.models import unet
        from foldnet.raster import spectral
        from foldnet.tasks.segmentation import losses as seg_losses

        problems = unet.arch_problems(cfg["arch"]) + unet.options_problems(cfg["arch"], cfg["arch_options"])
        try:
            seg_losses.parse_loss_spec(cfg["loss"] or DEFAULT_LOSS)
        except ConfigError as e:
            problems.append(str(e))
        try:
            spectral.check_indices(list(cfg["indices"] or []), spec.bands)
        except ValueError as e:
            problems.append(f"indices: {e}")
        problems += spectral.norm_max_problems(cfg["norm"], cfg["norm_max"], cfg["seg_bands"] or spec.bands)
        if cfg["norm_output"] == "symmetric" and cfg["norm"] == "zscore":
            problems.append("norm_output: symmetric maps [0, 1] to [-1, 1]; norm zscore is not in [0, 1]")
        if not math.isfinite(cfg["max_positive_share"]):
            problems.append(f"max_positive_share must be a finite number, got {cfg['max_positive_share']}")
        unknown = [b for b in (cfg["seg_bands"] or []) if b not in spec.bands]
        if unknown:
            problems.append(f"seg_bands {unknown} are not bands of the dataset ({', '.join(spec.bands)})")
        try:
            self.tta_names(cfg["tta_number"])
        except ConfigError as e:
            problems.append(str(e))
        if not str(cfg["monitor"]).startswith("val_") or cfg["monitor"] not in (
                "val_loss", "val_dice", "val_iou", "val_location_iou"):
            problems.append(f"monitor {cfg['monitor']!r}: segmentation logs val_loss, val_dice, val_iou, "
                            "val_location_iou")
        return problems

    def n_channels(self, cfg, spec):
        return len(cfg["seg_bands"] or spec.bands) + len(cfg["indices"] or [])

    def input_shape(self, cfg, spec):
        from foldnet.raster import spectral

        return (*spectral.padded_shape(spec.shape[:2]), self.n_channels(cfg, spec))

    def build_model(self, cfg, spec, weights):
        from foldnet.models import unet
        from foldnet.raster import spectral

        options = dict(cfg["arch_options"] or {})
        decoder = options.pop("decoder_filters", unet.DEFAULT_DECODER_FILTERS)
        height, width = spectral.padded_shape(spec.shape[:2])
        return unet.build_unet(cfg["arch"], self.n_channels(cfg, spec), (height, width), weights=weights or "none",
                               decoder_filters=decoder, options=options or None,
                               normalize=cfg["input_norm"] != "none")

    def compile_model(self, model, cfg, spec, optimizer):
        from foldnet.tasks.segmentation import losses as seg_losses

        names = ["dice", "iou"]
        n_groups = None
        if cfg["monitor"] == "val_location_iou":
            from foldnet.io import records

            n_groups = len(self._group_index(records.load_manifest(cfg["tfrec_dir"]), cfg))
            names.append("location_iou")
        model.compile(optimizer=optimizer, loss=seg_losses.make_loss(cfg["loss"] or DEFAULT_LOSS),
                      metrics=seg_losses.make_metrics(names, settings.DEFAULT_THRESHOLD, n_groups, EMPTY_LOCATION[cfg["location_iou_empty"]]),
                      jit_compile=bool(cfg["jit_compile"]))
        return model

    # -- prediction files
    def encode_outputs(self, outputs):
        return np.rint(np.clip(np.asarray(outputs, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)

    def decode_outputs(self, stored):
        stored = np.asarray(stored)
        if stored.dtype == np.uint8:
            return stored.astype(np.float32) / np.float32(255.0)
        return stored.astype(np.float32, copy=False)

    def encode_targets(self, targets):
        return np.asarray(targets, np.uint8)

    # -- scoring
    @property
    def fit_metrics(self):
        return {name: (lambda t, o, s, name=name: SegScorer().add(t, o).metric(name)) for name in ("dice", "dice_best")}

    def scorer(self, spec, groups=None):
        return SegScorer(groups)

    def groups(self, tfrec_dir):
        """{tile id: group} of ``tfrec_dir``'s tiles.csv when it names groups (locations), else None."""
        from foldnet.tasks.segmentation import data as seg_data

        manifest = manifest_at(tfrec_dir) if tfrec_dir else None
        if manifest is None:
            return None
        if not manifest.get("tiles_csv"):
            return None
        tiles = seg_data.read_tiles_csv(manifest)
        if "group" not in tiles.columns or not (tiles["group"].astype(str) != "").any():
            return None
        return dict(zip(tiles["id"].astype(str), tiles["group"].astype(str)))

    def score(self, targets, outputs, spec):
        return SegScorer().add(targets, outputs).scores()

    def invalid_targets(self, targets, outputs):
        targets = np.asarray(targets)
        n = len(targets)
        if targets.shape[1:] != outputs.shape[2:]:
            return np.ones(n, bool), f"mask shape {targets.shape[1:]} != map shape {outputs.shape[2:]}"
        return (targets.reshape(n, -1) > 1).any(axis=1), "mask values other than 0/1"

    def fit_post(self, targets, outputs, spec, folds=None, values=None, others=None):
        return SegScorer().add(targets, outputs).post()

    def report(self, stem, targets, outputs, title):
        """Dice-vs-threshold table and curve (``stem``.threshold.md / .png) of OOF maps; returns the paths."""
        return SegScorer().add(targets, outputs).report(stem, title)

    # -- submission
    def test_ids(self, template_path):
        return read_test_ids(template_path)

    def write_submission(self, ids, outputs, spec, template_path, out_path, k, post=None, values=None):
        from foldnet.raster import submission as seg_submission

        refuse_csv(out_path, "segmentation")
        threshold = float((post or {}).get("threshold", settings.DEFAULT_THRESHOLD))
        tar = str(out_path).endswith(".tar")
        with seg_submission.SubmissionWriter(out_path, ids, naming=spec.naming, shape=spec.shape[:2],
                                             tar=tar) as writer:
            for tile_id, prob in zip(ids, outputs):
                writer.add(tile_id, (prob >= threshold).astype(np.uint8))
        return f"{len(ids)} tiles, threshold {threshold:.2f}, {'tar' if tar else 'directory'}"


class SegScorer(tasks.Scorer):
    """``Task.scorer`` of segmentation: ``seg_metrics.Scores`` fed block by block (memory: counters only).

    With ``groups`` ({tile id: location}) the scores include ``location_iou``
    (On Cloud N's validation metric).
    """

    def __init__(self, groups=None):
        self.acc = seg_metrics.Scores(locations=groups)

    def add(self, targets, outputs, ids=None):
        self.acc.add(outputs, targets, ids if self.acc.locations is not None else None)
        return self

    def merge(self, other):
        self.acc.merge(other.acc)
        return self

    def scores(self):
        return self.acc.result()

    def metric(self, name):
        result = self.acc.result()
        if name not in result:
            raise ValueError(f"unknown segmentation fit metric {name!r}")
        return result[name]

    def post(self, folds=None, values=None):
        return {"threshold": float(self.acc.result()["threshold"])}

    def report(self, stem, title):
        rows = self.acc.curve.table()
        return seg_metrics.write_threshold_report(rows, seg_metrics.best_threshold(rows), f"{stem}.threshold.md",
                                                  f"{stem}.threshold.png", title=title)


TASK = tasks.register(SegmentationTask())
