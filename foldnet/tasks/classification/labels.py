"""The label map: label string <-> class index, and which labels are "original".

Written once by create_tfrecords.py next to the shards; training, scoring,
ensembling and submission all read it, so nothing re-fits an encoder later.
"""
import hashlib
import json

import numpy as np

from foldnet.core import fileio

# The label a submission gives an individual not among the original labels (Turtle Recall's "new_turtle").
DEFAULT_NEW_LABEL = "new_turtle"


class LabelMap:
    """Class index <-> label string, plus the set of original labels.

    ``labels``: list of label strings, position = class index (sorted order).
    ``original``: labels that may appear in a submission as themselves; any
    other predicted label becomes ``new_label`` (e.g. ``new_turtle``).
    """

    def __init__(self, labels, original=None, new_label=DEFAULT_NEW_LABEL):
        self.labels = [str(x) for x in labels]
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("label map has duplicate labels")
        self._index = {lab: i for i, lab in enumerate(self.labels)}
        original = self.labels if original is None else [str(x) for x in original]
        unknown = sorted(set(original) - set(self._index))
        if unknown:
            raise ValueError(f"original labels not in the label map: {unknown[:10]}")
        self.original = set(original)
        self.new_label = str(new_label)
        self.original_mask = np.array([lab in self.original for lab in self.labels], dtype=bool)

    @classmethod
    def fit(cls, labels, original=None, new_label=DEFAULT_NEW_LABEL):
        return cls(sorted(set(str(x) for x in labels)), original, new_label)

    @property
    def n_classes(self):
        return len(self.labels)

    def encode(self, labels):
        missing = sorted({str(x) for x in labels} - set(self._index))
        if missing:
            raise KeyError(f"labels not in the label map: {missing[:10]}")
        return np.array([self._index[str(x)] for x in labels], dtype=np.int64)

    def decode(self, indices):
        return [self.labels[int(i)] for i in np.asarray(indices).ravel()]

    def fingerprint(self):
        h = hashlib.sha256()
        h.update(json.dumps([self.labels, sorted(self.original), self.new_label]).encode())
        return h.hexdigest()[:16]

    def to_dict(self):
        return {
            "labels": self.labels,
            "original": sorted(self.original),
            "new_label": self.new_label,
            "n_classes": self.n_classes,
            "fingerprint": self.fingerprint(),
        }

    def save(self, path):
        fileio.atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path):
        d = fileio.read_json(path)
        lm = cls(d["labels"], d.get("original"), d.get("new_label", DEFAULT_NEW_LABEL))
        if "fingerprint" in d and d["fingerprint"] != lm.fingerprint():
            raise ValueError(f"{path}: label map fingerprint does not match its content")
        return lm

    def __eq__(self, other):
        return isinstance(other, LabelMap) and self.fingerprint() == other.fingerprint()

    def __repr__(self):
        return f"LabelMap({self.n_classes} classes, {len(self.original)} original, new_label={self.new_label!r})"


def load_label_map(manifest):
    return LabelMap.load(fileio.join(manifest["dir"], manifest["label_map"]))
