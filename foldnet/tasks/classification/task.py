"""The classification task (Turtle Recall): the single implementation of ``tasks.Task`` for it.

Records: ``records.FEATURES`` (encoded image + class index). Inputs: float32
``[dim, dim, 3]`` in [0, 1] (``data``), train-time augmentation from
``augment``, TTA views decoded once per image and predicted in one pass.
Model: ``models.build_model`` (backbone + softmax head, float32
probabilities ``[batch, n_classes]``). Loss: categorical cross-entropy with
label smoothing; Keras metrics ``acc`` and, above 5 classes, ``top5``.
Prediction files: ``outputs`` float32 ``[n_tta, n, n_classes]``, ``labels``
int64 ``[n]`` (-1 for test). Scores: ``metrics.score_all`` (top1, top5,
map5, map5_new). Post-processing: the open-set rule (``openset``: new label
first for rows that look unseen), fitted on OOF, saved per member in
``openset_rule.json``. Submission: CSV of the top-k labels under the
new-individual rule and the open-set rule (``submission``), in the
template's row order.

The spec is the ``LabelMap``.
"""
import numpy as np

from foldnet.core.errors import DataError
from foldnet.tasks import base as tasks
from foldnet.tasks.classification import metrics, openset, settings, submission
from foldnet.tasks.classification.labels import LabelMap, load_label_map


class ClassificationTask(tasks.Task):
    name = "classification"
    spec_file = "label_map.json"
    resume_keys = settings.RESUME_KEYS
    layouts = settings.LAYOUTS
    evaluate_module = settings.EVALUATE
    default_monitor = "val_loss"
    score_keys = metrics.SCORE_KEYS
    default_fit_metric = "map5"
    score_note = ("top1/top5: accuracy over all classes; map5: MAP@5 over all classes; "
                  "map5_new: MAP@5 after mapping non-original labels to the new-individual label.")

    # -- spec
    def load_spec(self, manifest):

        return load_label_map(manifest)

    def read_spec(self, path):
        return LabelMap.load(path)

    def spec_settings(self, spec):
        return {"n_classes": int(spec.n_classes)}

    # -- data
    def cache_mode(self, cfg, n_examples, encoded_mb):
        """``data.choose_cache``: decoded pixels if they fit the budget, else encoded bytes, else none."""
        from foldnet.tasks.classification import data

        return data.choose_cache(cfg["cache"], n_examples, cfg["dim"], encoded_mb, cfg["cache_budget_mb"])

    def train_dataset(self, files, spec, cfg, *, seed, cache, drop_remainder, n_workers):
        from foldnet.tasks.classification import data

        return data.train_dataset(files, spec.n_classes, cfg["dim"], cfg["batch_size"], cache=cache,
                                  shuffle_buffer=cfg["shuffle_buffer"], drop_remainder=drop_remainder, seed=seed,
                                  n_workers=n_workers,
                                  **({} if cfg["aug_in_model"] else cfg.aug.kwargs()))  # else the model augments

    def eval_dataset(self, files, spec, cfg):
        from foldnet.tasks.classification import data

        return data.eval_dataset(files, spec.n_classes, cfg["dim"], cfg["batch_size"], drop_remainder=False)

    def read_ids_targets(self, files):
        from foldnet.tasks.classification import data

        return data.read_ids_labels(files)

    def predict_files(self, model, files, cfg, verbose=0):
        """Probabilities [tta_number + 1, n, n_classes] of the records of ``files``, in file order."""
        from foldnet.tasks.classification import data

        ds, n_views = data.tta_dataset(files, cfg["dim"], cfg["batch_size"], cfg["tta_number"])
        return merge_views(model.predict(ds, verbose=verbose), n_views)

    def tta_names(self, tta_number):
        from foldnet.tasks.classification import augment

        return augment.tta_names(tta_number)

    # -- model
    def check_config(self, cfg, spec):
        from foldnet.models import backbones as models

        try:
            models.get_architecture(cfg["arch"])
        except ValueError as e:
            return [str(e)]
        return []

    def build_model(self, cfg, spec, weights):
        from foldnet.models import backbones as models

        return models.build_model(cfg["arch"], n_classes=spec.n_classes, dim=cfg["dim"], weights=weights,
                                  dropout=cfg["dropout"], options=cfg["arch_options"],
                                  normalize=cfg["input_norm"] != "none",
                                  augment_layer=augment_layer(cfg.aug) if cfg["aug_in_model"] else None,
                                  head=cfg["head"], head_scale=cfg["head_scale"])

    def compile_model(self, model, cfg, spec, optimizer):
        margin = cfg["head_margin"] if cfg["head"] == "arcface" else None
        return compile_classifier(model, spec.n_classes, optimizer, cfg["label_smoothing"], cfg["jit_compile"],
                                  arcface_margin=margin, head_scale=cfg["head_scale"])

    # -- prediction files
    def encode_outputs(self, outputs):
        return np.asarray(outputs, np.float32)

    def decode_outputs(self, stored):
        return stored

    def encode_targets(self, targets):
        return np.asarray(targets, np.int64)

    # -- scoring
    @property
    def fit_metrics(self):
        return metrics.METRICS

    def score(self, targets, outputs, spec):
        return metrics.score_all(targets, outputs, spec)

    post_file = openset.RULE_FILE

    row_value_key = openset.STORED_SCORE
    sim_value_key = openset.OTHER_SCORE

    def row_values_default(self, spec):
        """``openset_features: auto``: on when some class answers the new label (a dataset with new
        individuals), so the open-set rule can be fitted without held-out folds."""
        return bool((~openset.keep_mask(spec)).any())

    def fit_post(self, targets, outputs, spec, folds=None, values=None, others=None):
        return openset.fit_best_rule(targets, outputs, spec, folds, values, others=others)

    def row_values(self, model, files, reference_files, cfg, cache):
        """Per-row arrays [n] of the records of ``files`` against the fold's training images
        (``reference_files``; their unit features and prototypes computed once per ``cache``):
        ``row_value_key`` (``openset.STORED_SCORE``): the largest cosine similarity of a record's features
        (the classifier's input) to the prototype of a trained individual (the mean unit feature vector of its
        training images, normalised); ``sim_value_key`` (``openset.OTHER_SCORE``): the same without the
        prototype of the record's own individual (an unseen individual simulated in embedding space; records
        without a label: the same value); and the previous default's nearest-image similarities
        (``openset.NEAREST_SCORE`` / ``NEAREST_OTHER_SCORE``: rules fitted on them, comparisons)."""
        from foldnet.tasks.classification import data

        if "reference" not in cache:
            cache["reference"] = unit_features(model, reference_files, cfg)
            cache["reference_labels"] = data.read_ids_labels(reference_files)[1]
            cache["prototypes"], cache["prototype_labels"] = prototypes(cache["reference"], cache["reference_labels"])
        feats = unit_features(model, files, cfg)
        labels = data.read_ids_labels(files)[1]
        protos, proto_labels = cache["prototypes"], cache["prototype_labels"]
        return {self.row_value_key: nearest_cosine(feats, protos),
                self.sim_value_key: nearest_cosine(feats, protos, labels, proto_labels),
                openset.NEAREST_SCORE: nearest_cosine(feats, cache["reference"]),
                openset.NEAREST_OTHER_SCORE: nearest_cosine(feats, cache["reference"], labels,
                                                            cache["reference_labels"])}

    def post_markdown(self, post):
        return openset.rule_markdown(post)

    post_plot_name = "openset_curve.png"

    def post_plot(self, post, path, title=""):
        """The known vs new trade-off of the fitted rule (``plots.plot_tradeoff``), None without a curve."""
        from foldnet.core import plots

        if not post or not post.get("curve"):
            return None
        floor = post["oof"]["natural"]["known"]
        floor = None if floor is None else floor - openset.MAX_KNOWN_LOSS
        return plots.plot_tradeoff(post["curve"], path, title or f"open-set rule: {openset.describe(post)}",
                                   chosen=post.get("threshold"), floor=floor)

    def describe_post(self, post):
        return openset.describe(post)

    def invalid_targets(self, targets, outputs):
        targets = np.asarray(targets)
        n_classes = outputs.shape[-1]
        return (targets < 0) | (targets >= n_classes), f"labels missing or outside [0, {n_classes})"

    # -- submission
    def test_ids(self, template_path):
        template = read_template(template_path)
        if template.shape[1] < 2:
            raise DataError(f"{template_path}: needs an id column and prediction columns",
                            [f"columns: {list(template.columns)}"])
        return template.iloc[:, 0].to_numpy().astype(str)

    def write_submission(self, ids, outputs, spec, template_path, out_path, k, post=None, values=None):
        template = read_template(template_path)
        df = submission.make_submission(ids, outputs, spec, template, k, rule=post, values=values)
        submission.write_submission(df, out_path, template, spec)
        return f"{len(df)} rows, k={k}" + (f", {openset.describe(post)}" if post else "")


def unit_features(model, files, cfg):
    """L2-normalised inputs of the model's ``logits`` layer for the records of ``files`` (identity view,
    file order), float32 [n, d]."""
    import tensorflow as tf

    from foldnet.tasks.classification import data

    probe = tf.keras.Model(model.inputs, model.get_layer("logits").input)
    ds = data.eval_dataset(files, int(model.output_shape[-1]), cfg["dim"], cfg["batch_size"], drop_remainder=False)
    feats = np.asarray(probe.predict(ds.map(lambda x, y: x), verbose=0), np.float32)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def prototypes(unit_feats, labels):
    """One prototype per label of ``labels``: the mean of its rows of ``unit_feats`` (unit rows), L2-normalised
    (a zero mean stays zero). Returns ``(prototypes float32 [m, d], their labels [m])``, labels sorted."""
    unit_feats, labels = np.asarray(unit_feats, np.float64), np.asarray(labels)
    uniq, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(uniq), unit_feats.shape[1]))
    np.add.at(sums, inverse.reshape(-1), unit_feats)
    means = sums / np.bincount(inverse.reshape(-1), minlength=len(uniq))[:, None].clip(min=1)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return (means / np.where(norms > 0, norms, 1.0)).astype(np.float32), uniq


def nearest_cosine(feats, reference, labels=None, reference_labels=None, block=1024):
    """Per row of ``feats``, the largest dot product with a row of ``reference`` (both unit rows); with
    ``labels`` / ``reference_labels``, only with reference rows of another label than the row's own
    (-1 when none is left)."""
    out = np.empty(len(feats), np.float32)
    for start in range(0, len(feats), block):
        sims = feats[start:start + block] @ reference.T
        if labels is not None:
            sims = np.where(np.asarray(labels)[start:start + block, None] == np.asarray(reference_labels)[None, :],
                            -1.0, sims)
        out[start:start + block] = sims.max(axis=1) if sims.shape[1] else -1.0
    return out


def merge_views(out, n_views):
    """Model outputs of TTA-expanded batches [n * T, C] (image i at rows i*T..i*T+T-1) -> [T, n, C] float32."""
    out = np.asarray(out)
    out = out.reshape(-1, n_views, out.shape[-1])
    return np.ascontiguousarray(out.transpose(1, 0, 2)).astype(np.float32)


def compile_classifier(model, n_classes, optimizer, label_smoothing=0.0, jit_compile=False, arcface_margin=None,
                       head_scale=16.0):
    """Compile with categorical cross-entropy (``arcface_margin`` given: ArcFace's loss with that margin and
    ``head_scale``, for the arcface head), ``acc`` and (above 5 classes) ``top5``."""
    import tensorflow as tf

    from foldnet.models import backbones

    keras = tf.keras
    kmetrics = [keras.metrics.CategoricalAccuracy(name="acc")]
    if n_classes > 5:
        kmetrics.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5"))
    model.compile(
        optimizer=optimizer,
        loss=(keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing) if arcface_margin is None else
              backbones.ArcMarginLoss(arcface_margin, head_scale, label_smoothing)),
        metrics=kmetrics,
        jit_compile=bool(jit_compile),
    )
    return model


def read_template(path):
    """Submission template with every cell as a string (ids like '001' stay as written)."""
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the submission template {path}", [f"{path}: {e}"]) from e


TASK = tasks.register(ClassificationTask())


def augment_layer(aug):
    """``config.Augmentation`` as a model layer (``--aug_in_model``; inactive at inference)."""
    from foldnet.tasks.classification import augment

    return augment.GeometricAugment(aug.number, aug.probability, aug.crop_scale, aug.rotate, aug.photometric,
                                    name="augment")
