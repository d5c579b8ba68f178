"""Settings of the segmentation task (its section of run.py's config)."""
from foldnet.core.settings import Bound, Setting, as_bool, number_or_mapping

# The same tuples as raster.spectral.NORMS / NORM_OUTPUTS (that module needs TensorFlow; a test keeps them equal).
NORMS = ("quantile", "minmax", "zscore", "fixed", "band_max", "image_minmax")
NORM_OUTPUTS = ("unit", "symmetric")
# The decision threshold of a probability map when none was fitted on out-of-fold maps.
DEFAULT_THRESHOLD = 0.5

SETTINGS = (
    Setting("seg_bands", list, None, "Segmentation: raw bands kept as channels (default: all bands of the dataset)"),
    Setting("indices", list, None,
            "Segmentation: spectral indices added as channels (foldnet.raster.spectral.INDICES), e.g. NDVI NDWI"),
    Setting("norm", str, "quantile",
            f"Segmentation: normalisation of raw bands: {', '.join(NORMS)} (quantile/minmax/zscore from the "
            "manifest's band_stats; fixed: min(x / norm_max, 1); band_max: min(x / norm_max[band], 1); "
            "image_minmax: per tile and band (x - min) / (max - min))", choices=NORMS),
    Setting("norm_max", number_or_mapping, None,
            "Segmentation: the divisor of norm fixed (a number, e.g. 20000) or band_max (a mapping, e.g. "
            "'{B02: 22500, B03: 21000}')"),
    Setting("norm_output", str, "unit",
            "Segmentation: range of the normalised bands: unit = [0, 1]; symmetric = 2x - 1, in [-1, 1]",
            choices=NORM_OUTPUTS),
    Setting("location_iou_empty", str, "one",
            "Segmentation: the val_location_iou of a location without true or predicted pixels: one (foldnet) or "
            "zero (the On Cloud N 3rd place's checkpoint metric); the score job reports both conventions",
            choices=("one", "zero")),
    Setting("mask_indices", as_bool, True, "Segmentation: keep indices only on clear water (QA clear, DEM <= 0)"),
    Setting("sampler", dict, None,
            "Segmentation: weighted tile sampler terms of tiles.csv, e.g. '{has_positive: 2, cloud_share: -1}' "
            "(default: every tile alike); terms 1-<property> take 1 - value; minmax: true scales the weights "
            "to [0, 1] over the training tiles (the Kelp Wanted winner's form)"),
    Setting("max_positive_share", float, 1.0,
            "Segmentation: training tiles whose positive share exceeds this are never drawn for training "
            "(the Kelp Wanted winner drops tiles with > 0.4 kelp); 1 keeps every tile", bound=Bound(0.0, 1.0, False)),
)
RESUME_KEYS = ("seg_bands", "indices")

# -- what the shared command lines need to know, without importing the task (no TensorFlow)
LAYOUTS = ("kelp", "cloud", "seg")
CONVERTER = "foldnet.tasks.segmentation.convert:convert_from_flags"
LAYOUT_DETECTOR = "foldnet.tasks.segmentation.layouts:detect_layout"
# demo kind -> ("module:function(out_dir, args)" building it from demo-data's arguments, default out_dir)
DEMO_KINDS = {"kelp": ("foldnet.tasks.segmentation.demo_data:kelp_from_args", "data/kelp_demo"),
              "cloud": ("foldnet.tasks.segmentation.demo_data:cloud_from_args", "data/cloud_demo")}
EVALUATE = "foldnet.tasks.segmentation.evaluate"
BASELINE = "foldnet.tasks.segmentation.baseline"
# create_tfrecords.py flags (with their defaults) this task refuses besides the classification ones
REFUSED_FLAGS: dict = {"target_col": None}
