"""The vocabulary of image transforms (augmentation and TTA views of the photo pipeline) and the
bounds of the augmentation strengths: pure Python, so the config can bound its settings without
importing TensorFlow. ``tasks.classification.augment`` implements them."""

TRANSFORMS = (
    "identity",
    "flip_lr",
    "flip_ud",
    "rot90",
    "rot180",
    "rot270",
    "rot45",
    "rot135",
    "rot225",
    "rot315",
)
# aug_number / tta_number: how many of TRANSFORMS after the identity
MAX_NUMBER = len(TRANSFORMS) - 1
MAX_CROP_SCALE = 1.0
MAX_ROTATE_DEGREES = 180.0
MAX_PHOTOMETRIC = 2.0
