"""Settings of the classification task (its section of run.py's config)."""
from foldnet.core.settings import Bound, Setting, as_bool


def auto_or_bool(s):
    """``auto`` or a bool (``as_bool``'s spellings)."""
    return "auto" if str(s).strip().lower() == "auto" else as_bool(s)


SETTINGS = (
    Setting("label_smoothing", float, 0.0, "Label smoothing of the cross-entropy loss", Bound(0.0, 1.0, False)),
    Setting("openset_features", auto_or_bool, "auto",
            "Classification: store per predicted image the cosine similarity of its features (the classifier's input) "
            "to the nearest image its fold trained on, and to the nearest one of another individual (one more pass "
            "over the fold's training images); the open-set rule is then fitted on it without held-out folds and "
            "uses it instead of the largest probability (better on the photo stand-in). auto (default): on when "
            "the data has a new label (some class answers it, e.g. Turtle Recall's extra-only individuals)"),
    Setting("head", str, "softmax",
            "Classification head: softmax (global average pooling + Dense, as the Turtle Recall members) or cosine "
            "(an embedding head: GeM pooling + cosine classifier, head_scale x cosine of the features and the class "
            "weights), or arcface (the cosine head trained with ArcFace's additive angular margin, head_margin, in "
            "the loss only: predictions stay head_scale x cosine, softmax)", choices=("softmax", "cosine", "arcface")),
    Setting("head_scale", float, 16.0, "Scale of the cosine head's logits (head: cosine, arcface)",
            Bound(0.001, 1000.0, False)),
    Setting("head_margin", float, 0.3, "ArcFace's additive angular margin in radians (head: arcface; loss only)",
            Bound(0.0, 1.5, False)),
    Setting("images", list, None, "Image files for --job predict"),
    Setting("checkpoints", list, None,
            "Weight files for --job predict (default: every fold's best checkpoint in --run_dir)"),
)
# Settings a resumed fold must share with its interrupted run, beyond the shared ones.
RESUME_KEYS: tuple[str, ...] = ("head", "head_scale")

# -- what the shared command lines need to know, without importing the task (no TensorFlow)
LAYOUTS = ("classification",)
CONVERTER = "foldnet.tasks.classification.convert:convert_from_flags"
LAYOUT_DETECTOR = None  # the default task: used when no other task recognises the data
# demo kind -> ("module:function(out_dir, args)" building it from demo-data's arguments, default out_dir)
DEMO_KINDS = {"digits": ("foldnet.tasks.classification.demo_data:digits_from_args", "data/demo"),
              "photos": ("foldnet.tasks.classification.demo_data:photos_from_args", "data/photos")}
EVALUATE = "foldnet.tasks.classification.evaluate"
BASELINE = "foldnet.tasks.classification.baseline"
REFUSED_FLAGS: dict = {}
