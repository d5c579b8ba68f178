"""The one vocabulary of views (augmentation and TTA) of every task, and the bounds of the
augmentation strengths: pure Python, so the config can bound its settings without importing
TensorFlow. ``tasks.classification.augment`` implements the photo views, ``raster.views`` the map views.

Every task's views start with the same six exact pixel permutations in the same order
(``DIHEDRAL``), so ``tta_number: n`` means the same first views for photos and maps; after
them photos add four 45-degree views (a warp with a zoom, not invertible on a pixel grid) and
maps add ``transpose`` (exact and invertible, so a map predicted on it can be mapped back).
"""
from foldnet.core.errors import ConfigError

DIHEDRAL = ("identity", "flip_lr", "flip_ud", "rot90", "rot180", "rot270")
PHOTO_VIEWS = DIHEDRAL + ("rot45", "rot135", "rot225", "rot315")
MAP_VIEWS = DIHEDRAL + ("transpose",)
TRANSFORMS = PHOTO_VIEWS  # the photo pipeline's name for its views (augmentation and TTA)
# aug_number / tta_number: how many views after the identity (the config's bound; a task with fewer
# views refuses more: first_views)
MAX_NUMBER = max(len(PHOTO_VIEWS), len(MAP_VIEWS)) - 1


def first_views(vocabulary, tta_number, what="this task"):
    """The first ``tta_number + 1`` names of ``vocabulary`` (identity first); ConfigError naming the
    available views when there are fewer."""
    if isinstance(tta_number, bool) or not isinstance(tta_number, int) or not 0 <= tta_number < len(vocabulary):
        raise ConfigError(f"tta_number {tta_number!r}: {what} has {len(vocabulary) - 1} views besides the "
                          f"identity ({', '.join(vocabulary[1:])})")
    return list(vocabulary[:tta_number + 1])


def map_views(tta_number):
    """The first ``tta_number + 1`` views of the map tasks (segmentation, temporal regression)."""
    return first_views(MAP_VIEWS, tta_number, "a map task")
MAX_CROP_SCALE = 1.0
MAX_ROTATE_DEGREES = 180.0
MAX_PHOTOMETRIC = 2.0

# -- map_aug: the paired augmentation of the map tasks (image + mask, one warp; raster.views.paired_augment).
# Keys and defaults; every probability is in [0, 1]. Defaults leave everything off.
MAP_AUG_DEFAULTS = {
    "p": 0.0,              # probability of the affine map (rotation, zoom about a shifted centre)
    "rotate": 0.0,         # degrees either way, uniform
    "rotate_p": 1.0,       # given the affine, probability that the angle is drawn (else 0 degrees)
    "scale_sd": 0.0,       # zoom ~ Normal(1, scale_sd)
    "scale_p": 1.0,        # given the affine, probability that the zoom is drawn (else 1)
    "shift": 0.0,          # the centre of rotation and zoom moves up to this fraction of the side either way
    "target_interp": "nearest",  # mask under the affine: nearest, or bilinear then > 0.5 (binary masks)
    "cutout_p": 0.0,       # probability of one zeroed rectangle (image and mask), sides 1 .. 0.4 * side - 1
    "elastic_p": 0.0,      # probability of an elastic jitter of the image only (the mask is left as it is)
    "photometric_p": 0.0,  # probability of the brightness shift, and independently of the contrast gain
}
TARGET_INTERP = ("nearest", "bilinear")
MAX_MAP_ROTATE = 180.0


def map_aug_problems(value):
    """Every problem of a ``map_aug`` mapping as lines ([] when it is None or fine)."""
    import math

    if value is None:
        return []
    if not isinstance(value, dict):
        return [f"map_aug must be a mapping of {', '.join(MAP_AUG_DEFAULTS)}, got {value!r}"]
    problems = [f"map_aug: unknown key {k!r} (keys: {', '.join(MAP_AUG_DEFAULTS)})"
                for k in value if k not in MAP_AUG_DEFAULTS]
    highs = {"rotate": MAX_MAP_ROTATE, "shift": 1.0, "scale_sd": 0.5}
    for key, v in value.items():
        if key not in MAP_AUG_DEFAULTS:
            continue
        if key == "target_interp":
            if v not in TARGET_INTERP:
                problems.append(f"map_aug.target_interp={v!r}: choose one of {', '.join(TARGET_INTERP)}")
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            problems.append(f"map_aug.{key} must be a finite number, got {v!r}")
            continue
        high = highs.get(key, 1.0)
        if not 0.0 <= float(v) <= high:
            problems.append(f"map_aug.{key} must be in [0, {high:g}], got {v}")
    return problems


def map_aug_options(value):
    """``map_aug`` with every key filled from MAP_AUG_DEFAULTS (numbers as float)."""
    out = dict(MAP_AUG_DEFAULTS, **(value or {}))
    return {k: (v if k == "target_interp" else float(v)) for k, v in out.items()}
