"""Settings of the temporal regression task (its section of run.py's config)."""
from foldnet.core.settings import Bound, Setting

# Targets above this are ignored by the loss, the Keras metrics and the *_capped scores: the cap of
# The BioMassters 1st place (its loss ignored AGB > 400 Mg/ha). The one owner of the value.
TARGET_CAP = 400.0
TEMPORAL_INPUTS = "all, month:K (month K only) or mean (the mean of the months)"

SETTINGS = (
    Setting("temporal_input", str, "all", f"Temporal regression: months the model sees: {TEMPORAL_INPUTS}"),
    Setting("target_cap", float, TARGET_CAP,
            "Temporal regression: loss and Keras metrics ignore targets above this value (0 = no cap)",
            Bound(0.0, 1e9, False)),
    Setting("month_dropout", float, 0.0,
            "Temporal regression: train-time probability of dropping each month (at least one month is kept)",
            Bound(0.0, 1.0, True)),
    Setting("month_dropout_chips", float, 1.0,
            "Temporal regression: share of training chips month dropout applies to (the others keep every month; "
            "the 1st place: 0.5 with month_dropout 0.3)", Bound(0.0, 1.0, False)),
    Setting("month_needs", str, "any",
            "Temporal regression: what makes a month present for the model: any (any value) or a sensor of the "
            "records (e.g. S2: months without a usable S2 image are masked; records from before per-sensor "
            "presence: any)"),
    Setting("nonneg", str, "softplus", "Temporal regression: non-negativity of the output: softplus, relu or none"),
    Setting("band_norm", dict, None,
            "Temporal regression: min-max range per band overriding the manifest's, e.g. "
            "'{VV: [-25, 0], B04: [0, 10000]}' (default: the layout's or the manifest's ranges)"),
)
# Settings a resumed fold must share with its interrupted run: they change the model's input or output.
RESUME_KEYS = ("temporal_input", "nonneg", "band_norm", "month_needs")

# -- what the shared command lines need to know, without importing the task (no TensorFlow)
LAYOUTS = ("biomassters", "temporal")
CONVERTER = "foldnet.tasks.temporal.convert:convert_from_flags"
LAYOUT_DETECTOR = "foldnet.tasks.temporal.layouts:detect_layout"
# demo kind -> ("module:function(out_dir, args)" building it from demo-data's arguments, default out_dir)
DEMO_KINDS = {"biomass": ("foldnet.tasks.temporal.demo_data:biomass_from_args", "data/biomass_demo")}
EVALUATE = "foldnet.tasks.temporal.evaluate"
BASELINE = "foldnet.tasks.temporal.baseline"
# create_tfrecords.py flags (with their defaults) this task refuses besides the classification ones
REFUSED_FLAGS: dict = {"mask_col": None, "group_col": None, "group_duplicates": None, "fold_method": "stratified"}
