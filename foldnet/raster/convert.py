"""Conversion helpers of the map tasks (segmentation tiles, temporal chips): per-band statistics
accumulated over the training items, shards written from worker-loaded items, and the flag
checks every map layout shares."""
import numpy as np

from foldnet.core.errors import ConfigError, DataError
from foldnet.io import images
from foldnet.io.convert import shared_flag_problems

# the band statistics' quantiles stored in the manifest (q01, q99)
QUANTILES = (0.01, 0.99)


class BandStats:
    """Accumulates the partial statistics of seg_tiles.band_partial into the manifest's band_stats."""

    def __init__(self, names):
        self.names = list(names)
        self.count = np.zeros(len(names), np.int64)
        self.missing = np.zeros(len(names), np.int64)
        self.sum = np.zeros(len(names))
        self.sumsq = np.zeros(len(names))
        self.min = [None] * len(names)
        self.max = [None] * len(names)
        self.values = [[] for _ in names]
        self.weights = [[] for _ in names]
        self.exact = True

    def add(self, partials, dtype):
        self.exact = self.exact and np.issubdtype(np.dtype(dtype), np.integer) and np.dtype(dtype).itemsize <= 2
        for b, p in enumerate(partials):
            self.count[b] += p["count"]
            self.missing[b] += p["missing"]
            if p["count"]:
                self.sum[b] += p["sum"]
                self.sumsq[b] += p["sumsq"]
                self.min[b] = p["min"] if self.min[b] is None else min(self.min[b], p["min"])
                self.max[b] = p["max"] if self.max[b] is None else max(self.max[b], p["max"])
                self.values[b].append(p["values"])
                self.weights[b].append(p["counts"])

    @staticmethod
    def quantile(values, weights, q):
        """Smallest value whose cumulative weight share reaches ``q`` (inverted CDF)."""
        v = np.concatenate(values).astype(np.float64)
        w = np.concatenate(weights).astype(np.float64)
        order = np.argsort(v, kind="stable")
        v, w = v[order], w[order]
        cum = np.cumsum(w)
        return float(v[min(np.searchsorted(cum, q * cum[-1] - 1e-9 * cum[-1]), len(v) - 1)])

    def table(self):
        rows = []
        for b, name in enumerate(self.names):
            n, total = int(self.count[b]), int(self.count[b] + self.missing[b])
            row = {"band": name, "n_valid": n, "missing_share": float(self.missing[b] / total) if total else 0.0}
            if n:
                mean = self.sum[b] / n
                row.update(min=self.min[b], max=self.max[b], mean=float(mean),
                           std=float(np.sqrt(max(self.sumsq[b] / n - mean * mean, 0.0))))
                row.update({f"q{int(round(q * 100)):02d}": self.quantile(self.values[b], self.weights[b], q)
                            for q in QUANTILES})
            else:
                row.update(min=None, max=None, mean=None, std=None, q01=None, q99=None)
            rows.append(row)
        return rows


def write_shards(jobs, out_dir, limit, workers, progress, load, encode, what="tile"):
    """Write ``jobs`` (each with ``split`` and ``spec``) into shards; returns ({split: files}, {split: count}).

    ``load``: worker task reading one spec ((True, value) or (False, reason)); ``encode(job, value)``: the
    serialized example. Raises DataError if an item became unreadable since it was inspected."""
    from foldnet.io import records

    writers, bad = {}, []
    results = images.map_images(load, [j.spec for j in jobs], workers, desc="writing shards", progress=progress)
    for job, (ok, value) in zip(jobs, results):
        if job.split not in writers:
            writers[job.split] = records.ShardWriter(out_dir, job.split, limit)
        if not ok:
            bad.append(f"{job.spec.id}: {value}")
            continue
        writers[job.split].write(encode(job, value))
    files = {split: w.close() for split, w in writers.items()}
    if bad:
        raise DataError(f"{len(bad)} {what}(s) could not be read while writing (changed since checked?)", bad)
    return files, {split: w.n_examples for split, w in writers.items()}


def check_flags(layout, n_folds, group_duplicates, stratify_bins, shard_size, skip_bad, layouts, kind, items):
    """ConfigError naming every bad flag of a ``kind`` layout (one of ``layouts``)."""
    problems = shared_flag_problems(n_folds, group_duplicates, shard_size)
    if layout not in layouts:
        problems.append(f"--layout must be one of {', '.join(layouts)} for {kind}, got {layout!r}")
    if stratify_bins < 1:
        problems.append(f"--stratify_bins must be >= 1, got {stratify_bins}")
    if skip_bad:
        problems.append(f"--skip_bad is not supported for {kind} layouts: fix or remove the listed {items}")
    if problems:
        raise ConfigError("; ".join(problems))
