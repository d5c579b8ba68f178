"""Features of multispectral tiles: band roles, spectral indices, masking,
missing-value fill, normalisation, padding (core TF ops: usable in ``tf.data`` map).

Band roles
    Bands are found by the names in the manifest's ``image.bands``
    (case-insensitive): ``SWIR``/``B11`` -> swir, ``NIR``/``B08`` -> nir,
    ``R``/``B04`` -> red, ``G``/``B03`` -> green, ``B``/``B02`` -> blue,
    ``QA`` -> qa, ``DEM`` -> dem (``BAND_ALIASES``). Kelp Wanted tiles are
    ``SWIR, NIR, R, G, B, QA, DEM``; Cloud Cover chips ``B02, B03, B04, B08``.

Spectral indices (``INDICES``, each defined once here)
    Normalised differences are scale-free; the indices with additive constants
    (EVI, EVI2, SAVI, MSAVI) and FAI are computed on reflectance, i.e. the raw
    value times ``reflectance_scale`` plus ``reflectance_offset`` (Landsat
    Collection 2 surface reflectance: 2.75e-5 and -0.2). An index with a
    natural range is min-max normalised over it; the others over a range
    fitted on training tiles (``seg_data.fit_index_ranges``) or, failing
    that, the nominal range listed here.

    The 17 indices of the Kelp Wanted 2nd-place solution (DEMWM, NDVI, ATSAVI,
    AVI, CI, ClGreen, GBNDVI, GVMI, IPVI, KIVU, MCARI, MVI, NormNIR, PNDVI,
    SABI, WDRVI, mCRIG) follow its ``kelp/core/indices.py`` literally: raw
    values, ``+ 1e-10`` in the denominators where it has one, IEEE division
    otherwise (mCRIG's ``1/B`` may be inf; ``Features`` replaces NaN and -inf by
    the index's minimum, +inf by its maximum). CIG is another name of ClGreen.

Masking (``mask_indices``)
    An index is kept only on clear water: where the QA band is clear (0, or
    any of ``qa_clear``), the DEM is not missing and DEM <= 0 (the winner's
    ``QA == 0 and DEMWM == 0``, DEMWM being NaN where the DEM is missing).
    DEMWM itself is never masked. Elsewhere, like wherever one of its bands
    is missing, an index takes its channel minimum (0 after normalisation).
    Tiles without QA or DEM bands are not masked on that band.

Index statistics (``index_stats``)
    When the manifest holds statistics of an index (``data.index_stats``,
    written by the converter over every training tile), the index is scaled
    as the winner does: masked or missing pixels, NaN and -inf take the
    index's ``min``, +inf its ``max``, then ``(clip(x, q01, q99) - q01) /
    (q99 - q01 + 1e-10)``. Otherwise: min-max over its natural or fitted
    range, masked or missing pixels 0.

Missing values
    A band value equal to the manifest's ``missing_value``, or any pixel whose
    valid flag is 0, is missing; it takes the channel's minimum after
    normalisation (0 for min-max, ``(min - mean) / std`` for z-score).

Normalisation of raw bands (``norm``)
    ``quantile``: ``(x - q01) / (q99 - q01)`` clipped to [0, 1];
    ``minmax``: the same with the band's min and max;
    ``zscore``: ``(x - mean) / std``, no clipping.
    Statistics come from the manifest's ``band_stats``. A band whose range is
    zero (e.g. a QA band that is always 0 in the 1-99 % quantiles) maps to
    ``x - low`` clipped to [0, 1], i.e. it stays a 0/1-ish flag.

Normalisations without statistics (the 3rd-place On Cloud N solution's, ``Dataset.py:59-67``)
    ``fixed``: ``min(x / norm_max, 1)`` with one number ``norm_max`` for every band;
    ``band_max``: ``min(x / norm_max[band], 1)`` with a mapping ``{band: value}``;
    ``image_minmax``: per image and band ``(x - min) / (max - min)`` over all pixels of
    the tile (missing ones included, as the winner), 0 for a constant band (the
    winner divides by 0 there). No lower clip in any of them (the winner has none).
    Missing pixels take 0, the value a 0 gets.

Output range (``norm_output``)
    ``unit``: the values above; ``symmetric``: ``2u - 1`` of every channel (the
    winner's ``preprocess_inputs_float``, ``utils.py:128-132``), missing pixels too.
    ``Features.value_range`` is the range the channels lie in ((0, 1), (-1, 1), or
    None for z-score), used by the value augmentations (``views.photometric``).

Padding
    ``pad_to_multiple`` pads H and W to a multiple of 32 (350 -> 352, one
    pixel before and one after), ``crop_padding`` crops back.
"""
import dataclasses
import math
from typing import Callable, Tuple

import tensorflow as tf

BAND_ALIASES = {
    "swir": ("swir", "swir1", "b11", "b6_swir"),
    "nir": ("nir", "b08", "b8", "b5_nir"),
    "red": ("r", "red", "b04", "b4"),
    "green": ("g", "green", "b03", "b3"),
    "blue": ("b", "blue", "b02", "b2"),
    "qa": ("qa", "cloud", "cloud_mask"),
    "dem": ("dem", "elevation"),
}

# Landsat 7 ETM+ centre wavelengths (nm), used by FAI's baseline interpolation.
WAVELENGTH = {"red": 660.0, "nir": 835.0, "swir": 1650.0}

_EPS = 1e-6
# The Kelp Wanted 2nd-place index guard (its consts/data.py EPS) and normalisation guard.
KELP_EPS = 1e-10


def _ratio(num, den):
    """num / den, 0 where |den| is tiny (no inf/NaN from dark or missing pixels)."""
    ok = tf.abs(den) > _EPS
    return tf.where(ok, num / tf.where(ok, den, tf.ones_like(den)), tf.zeros_like(num))


def _nd(a, b):
    return lambda r: _ratio(r[a] - r[b], r[a] + r[b])


def _msavi(r):
    n, red = r["nir"], r["red"]
    root = tf.sqrt(tf.maximum(tf.square(2.0 * n + 1.0) - 8.0 * (n - red), 0.0))
    return (2.0 * n + 1.0 - root) / 2.0


def _fai(r):
    t = (WAVELENGTH["nir"] - WAVELENGTH["red"]) / (WAVELENGTH["swir"] - WAVELENGTH["red"])
    return r["nir"] - (r["red"] + (r["swir"] - r["red"]) * t)


@dataclasses.dataclass(frozen=True)
class Index:
    name: str
    formula: str
    bands: Tuple[str, ...]
    fn: Callable
    natural: bool  # range is the index's own (True) or a nominal one, replaced by a fitted range
    range: Tuple[float, float]
    reflectance: bool  # needs reflectance (has additive constants)
    masked: bool = True  # False: never masked to clear water (DEMWM)
    fixed: bool = False  # True: its statistics are its range, never fitted (DEMWM: the winner forces 0..1)


def _kelp_indices():
    """The indices of the Kelp Wanted 2nd-place solution as its kelp/core/indices.py defines them
    (raw values, e = KELP_EPS); nominal ranges, replaced by fitted statistics."""
    e = KELP_EPS

    def demwm(r):
        return tf.maximum(r["dem"], 0.0)

    def atsavi(r):
        n, red = r["nir"], r["red"]
        return 1.22 * (n - 1.22 * red - 0.03) / (1.22 * n + red - 1.22 * 0.03 + 0.08 * (1.0 + 1.22 ** 2) + e)

    def ipvi(r):
        n, red, g = r["nir"], r["red"], r["green"]
        return (n / (n + red + e) / 2.0) * (((red - g) / (red + e) + g) + 1.0 + e)

    def mcari(r):
        n, red, g = r["nir"], r["red"], r["green"]
        return ((n - red) - 0.2 * (n - g)) * (n / (red + e))

    def gvmi(r):
        n, sw = r["nir"], r["swir"]
        return ((n + 0.1) - (sw + 0.02)) / ((n + 0.1) + (sw + 0.02) + e)

    def mcrig(r):
        return (1.0 / r["blue"] - 1.0 / r["green"]) * r["nir"]

    def k(name, formula, bands, fn, rng=(-1.0, 1.0), **kw):
        return Index(name, formula, bands, fn, False, rng, False, **kw)

    return [
        Index("DEMWM", "max(DEM, 0) (DEM water mask: 0 on water; never masked)", ("dem",), demwm, True, (0.0, 1.0),
              False, masked=False, fixed=True),
        k("ATSAVI", "1.22 (NIR - 1.22 R - 0.03) / (1.22 NIR + R - 1.22 * 0.03 + 0.08 (1 + 1.22^2) + e)",
          ("nir", "red"), atsavi),
        k("AVI", "2 NIR - R", ("nir", "red"), lambda r: 2.0 * r["nir"] - r["red"], (0.0, 20000.0)),
        k("CI", "(R - B) / (R + e) (coloration index)", ("red", "blue"),
          lambda r: (r["red"] - r["blue"]) / (r["red"] + e)),
        k("ClGreen", "NIR / (G + e) - 1 (chlorophyll index green)", ("nir", "green"),
          lambda r: r["nir"] / (r["green"] + e) - 1.0, (-1.0, 5.0)),
        k("GBNDVI", "(NIR - (G + B)) / (NIR + G + B + e)", ("nir", "green", "blue"),
          lambda r: (r["nir"] - (r["green"] + r["blue"])) / (r["nir"] + r["green"] + r["blue"] + e)),
        k("GVMI", "((NIR + 0.1) - (SWIR + 0.02)) / ((NIR + 0.1) + (SWIR + 0.02) + e)", ("nir", "swir"), gvmi),
        k("IPVI", "(NIR / (NIR + R + e) / 2) ((R - G) / (R + e) + G + 1 + e) (as the winner writes it)",
          ("nir", "red", "green"), ipvi, (0.0, 20000.0)),
        k("KIVU", "(B - R) / (G + e)", ("blue", "red", "green"), lambda r: (r["blue"] - r["red"]) / (r["green"] + e)),
        k("MCARI", "((NIR - R) - 0.2 (NIR - G)) (NIR / (R + e))", ("nir", "red", "green"), mcari, (-1e4, 1e4)),
        k("MVI", "NIR / (SWIR + e) (mid-infrared vegetation index)", ("nir", "swir"),
          lambda r: r["nir"] / (r["swir"] + e), (0.0, 5.0)),
        k("NormNIR", "NIR / (NIR + R + G + e)", ("nir", "red", "green"),
          lambda r: r["nir"] / (r["nir"] + r["red"] + r["green"] + e), (0.0, 1.0)),
        k("PNDVI", "(NIR - (R + G + B)) / (NIR + R + G + B + e)", ("nir", "red", "green", "blue"),
          lambda r: (r["nir"] - (r["red"] + r["green"] + r["blue"]))
          / (r["nir"] + r["red"] + r["green"] + r["blue"] + e)),
        k("SABI", "(NIR - R) / (G + B + e) (surface algal bloom index)", ("nir", "red", "green", "blue"),
          lambda r: (r["nir"] - r["red"]) / (r["green"] + r["blue"] + e)),
        k("WDRVI", "(0.1 NIR - R) / (0.1 NIR + R + e)", ("nir", "red"),
          lambda r: (0.1 * r["nir"] - r["red"]) / (0.1 * r["nir"] + r["red"] + e)),
        k("mCRIG", "(1 / B - 1 / G) NIR (no guard: inf where B or G is 0)", ("blue", "green", "nir"), mcrig,
          (-1.0, 1.0)),
    ]


INDICES = {i.name: i for i in [
    Index("NDVI", "(NIR - R) / (NIR + R)", ("nir", "red"), _nd("nir", "red"), True, (-1.0, 1.0), False),
    Index("NDWI", "(G - NIR) / (G + NIR)", ("green", "nir"), _nd("green", "nir"), True, (-1.0, 1.0), False),
    Index("GNDVI", "(NIR - G) / (NIR + G)", ("nir", "green"), _nd("nir", "green"), True, (-1.0, 1.0), False),
    Index("MNDWI", "(G - SWIR) / (G + SWIR)", ("green", "swir"), _nd("green", "swir"), True, (-1.0, 1.0), False),
    Index("NDMI", "(NIR - SWIR) / (NIR + SWIR)", ("nir", "swir"), _nd("nir", "swir"), True, (-1.0, 1.0), False),
    Index("NDTI", "(R - G) / (R + G)", ("red", "green"), _nd("red", "green"), True, (-1.0, 1.0), False),
    Index("BNDVI", "(NIR - B) / (NIR + B)", ("nir", "blue"), _nd("nir", "blue"), True, (-1.0, 1.0), False),
    Index("EVI", "2.5 (NIR - R) / (NIR + 6 R - 7.5 B + 1)", ("nir", "red", "blue"),
          lambda r: 2.5 * _ratio(r["nir"] - r["red"], r["nir"] + 6.0 * r["red"] - 7.5 * r["blue"] + 1.0),
          False, (-1.0, 1.0), True),
    Index("EVI2", "2.5 (NIR - R) / (NIR + 2.4 R + 1)", ("nir", "red"),
          lambda r: 2.5 * _ratio(r["nir"] - r["red"], r["nir"] + 2.4 * r["red"] + 1.0), False, (-1.0, 1.0), True),
    Index("SAVI", "1.5 (NIR - R) / (NIR + R + 0.5)", ("nir", "red"),
          lambda r: 1.5 * _ratio(r["nir"] - r["red"], r["nir"] + r["red"] + 0.5), True, (-1.5, 1.5), True),
    Index("MSAVI", "(2 NIR + 1 - sqrt((2 NIR + 1)^2 - 8 (NIR - R))) / 2", ("nir", "red"), _msavi, True,
          (-1.0, 1.0), True),
    Index("SR", "NIR / R (simple ratio)", ("nir", "red"), lambda r: _ratio(r["nir"], r["red"]), False, (0.0, 8.0), False),
    Index("VARI", "(G - R) / (G + R - B)", ("green", "red", "blue"),
          lambda r: _ratio(r["green"] - r["red"], r["green"] + r["red"] - r["blue"]), False, (-1.0, 1.0), False),
    Index("FAI", "NIR - (R + (SWIR - R) (835 - 660) / (1650 - 660)) (floating algae)", ("nir", "red", "swir"),
          _fai, False, (-0.05, 0.1), True),
    *_kelp_indices(),
]}
# Other names of an index (one definition): CIG is ClGreen.
INDEX_ALIASES = {"CIG": "ClGreen"}
INDICES.update({alias: INDICES[name] for alias, name in INDEX_ALIASES.items()})
# The Kelp Wanted 2nd-place solution's indices, in its order (Makefile `train`, --spectral_indices).
KELP_WINNER_INDICES = ("DEMWM", "NDVI", "ATSAVI", "AVI", "CI", "ClGreen", "GBNDVI", "GVMI", "IPVI", "KIVU", "MCARI",
                       "MVI", "NormNIR", "PNDVI", "SABI", "WDRVI", "mCRIG")


def band_roles(bands):
    """{role: band position} of the bands whose name is a known alias (see BAND_ALIASES)."""
    roles = {}
    for pos, name in enumerate(bands):
        for role, aliases in BAND_ALIASES.items():
            if str(name).strip().lower() in aliases and role not in roles:
                roles[role] = pos
    return roles


def check_indices(names, bands):
    """Raise ValueError naming every unknown index or index whose bands are absent."""
    roles = band_roles(bands)
    problems = []
    for name in names:
        if name not in INDICES:
            problems.append(f"unknown index {name!r} (known: {', '.join(INDICES)})")
            continue
        absent = [b for b in INDICES[name].bands if b not in roles]
        if absent:
            problems.append(f"index {name} needs band(s) {', '.join(absent)}, not among bands {list(bands)}")
    if problems:
        raise ValueError("; ".join(problems))


def role_planes(image, bands):
    """{role: float32 plane [..., H, W]} of the bands with a known role (channel-first copies)."""
    planes = tf.experimental.numpy.moveaxis(tf.cast(image, tf.float32), -1, 0)
    return {role: planes[pos] for role, pos in band_roles(bands).items()}


def index_planes(raw, names, reflectance_scale=1.0, reflectance_offset=0.0):
    """[plane] of the indices ``names`` from role planes (``role_planes``)."""
    refl = {role: raw[role] * float(reflectance_scale) + float(reflectance_offset) for role in raw}
    return [INDICES[n].fn(refl if INDICES[n].reflectance else raw) for n in names]


def clear_water_plane(raw, qa_clear=(0,)):
    """bool plane: QA clear and DEM <= 0 (True where the band is absent)."""
    keep = tf.ones(tf.shape(next(iter(raw.values()))), tf.bool)
    if "qa" in raw:
        keep &= tf.reduce_any(tf.stack([tf.equal(raw["qa"], float(v)) for v in qa_clear]), 0)
    if "dem" in raw:
        keep &= raw["dem"] <= 0.0
    return keep


def compute_indices(image, bands, names, reflectance_scale=1.0, reflectance_offset=0.0):
    """Raw spectral indices ``[..., H, W, len(names)]`` float32 of an image ``[..., H, W, C]``.

    No masking or normalisation; a division by ~0 gives 0.
    """
    check_indices(names, bands)
    if not names:
        return tf.zeros(tf.concat([tf.shape(image)[:-1], [0]], 0), tf.float32)
    return tf.stack(index_planes(role_planes(image, bands), names, reflectance_scale, reflectance_offset), -1)


def clear_water(image, bands, qa_clear=(0,)):
    """bool ``[..., H, W]``: QA clear and DEM <= 0 (True where the band is absent)."""
    return clear_water_plane(role_planes(image, bands), qa_clear)


def _stat(stats, key, band):
    if key not in stats or stats[key] is None or not math.isfinite(float(stats[key])):
        raise ValueError(f"band_stats of band {band!r} has no finite {key!r}")
    return float(stats[key])


def band_affine(band_stats, norm):
    """(scale, shift, low, high, fill) per band: ``y = clip((x - shift) * scale, low, high)``.

    fill is the channel minimum after normalisation (the value of missing pixels).
    """
    out = []
    for s in band_stats:
        band = s.get("band", "?")
        if norm in ("quantile", "minmax"):
            lo_key, hi_key = ("q01", "q99") if norm == "quantile" else ("min", "max")
            lo, hi = _stat(s, lo_key, band), _stat(s, hi_key, band)
            scale = 1.0 / (hi - lo) if hi - lo > _EPS else 1.0
            out.append((scale, lo, 0.0, 1.0, 0.0))
        elif norm == "zscore":
            mean, std, low = _stat(s, "mean", band), _stat(s, "std", band), _stat(s, "min", band)
            scale = 1.0 / std if std > _EPS else 1.0
            out.append((scale, mean, -math.inf, math.inf, (low - mean) * scale))
        else:
            raise ValueError(f"unknown normalisation {norm!r}; use quantile, minmax or zscore")
    return out


FIXED_NORMS = ("fixed", "band_max", "image_minmax")  # no band statistics needed
NORMS = ("quantile", "minmax", "zscore", *FIXED_NORMS)
NORM_OUTPUTS = ("unit", "symmetric")


def norm_max_problems(norm, norm_max, bands):
    """Every problem of ``norm_max`` for ``norm`` and the kept ``bands``, as lines."""
    def bad_number(v):
        return isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or float(v) <= 0

    if norm == "fixed":
        if norm_max is None or isinstance(norm_max, dict) or bad_number(norm_max):
            return [f"norm: fixed needs norm_max, one positive finite number (e.g. 20000), got {norm_max!r}"]
    elif norm == "band_max":
        if not isinstance(norm_max, dict):
            return [f"norm: band_max needs norm_max, a mapping {{band: positive number}} over bands {list(bands)}, "
                    f"got {norm_max!r}"]
        problems = [f"norm_max has no value for band {b!r}" for b in bands if b not in norm_max]
        problems += [f"norm_max.{b} must be a positive finite number, got {v!r}" for b, v in norm_max.items()
                     if bad_number(v)]
        return problems
    elif norm_max is not None:
        return [f"norm_max is used by norm fixed or band_max only, not {norm}"]
    return []


def fixed_affine(norm, norm_max, bands):
    """(scale, shift, low, high, fill) per band of the ``fixed`` / ``band_max`` / ``image_minmax``
    normalisations (image_minmax: the identity; the tile's own range is applied in ``Features``)."""
    problems = norm_max_problems(norm, norm_max, bands)
    if problems:
        raise ValueError("; ".join(problems))
    if norm == "image_minmax":
        return [(1.0, 0.0, -math.inf, math.inf, 0.0) for _ in bands]
    divisors = [norm_max[b] if norm == "band_max" else norm_max for b in bands]
    return [(1.0 / float(d), 0.0, -math.inf, 1.0, 0.0) for d in divisors]


class Features:
    """Raw tile -> normalised features ``[H, W, F]`` float32 (see module doc).

    manifest: a segmentation manifest (``image`` and ``band_stats``).
    bands: names of the raw bands to keep as channels (default: all; e.g.
        drop QA/DEM). indices: names from ``INDICES``.
    norm: quantile | minmax | zscore (raw bands; indices always min-max).
    index_ranges: {name: (low, high)} overriding an index's range (fitted).
    index_stats: {name: {min, max, q01, q99}} of indices scaled as the Kelp Wanted
        winner (see module doc); they take precedence over index_ranges.
    mask_indices: keep indices only on clear water (QA clear, DEM present and <= 0).
    jit_compile: compute through one XLA-compiled function (one compile per input shape).
    """

    def __init__(self, manifest, bands=None, indices=(), norm="quantile", index_ranges=None, mask_indices=True,
                 qa_clear=(0,), reflectance_scale=1.0, reflectance_offset=0.0, jit_compile=True, norm_max=None,
                 norm_output="unit", index_stats=None):
        image = manifest["image"]
        self.all_bands = list(image["bands"])
        self.bands = list(self.all_bands if bands is None else bands)
        unknown = [b for b in self.bands if b not in self.all_bands]
        if unknown:
            raise ValueError(f"bands {unknown} are not in the dataset's bands {self.all_bands}")
        self.indices = list(indices)
        check_indices(self.indices, self.all_bands)
        self.norm = norm
        if norm_output not in NORM_OUTPUTS:
            raise ValueError(f"unknown norm_output {norm_output!r}; use {' or '.join(NORM_OUTPUTS)}")
        if norm_output == "symmetric" and norm == "zscore":
            raise ValueError("norm_output: symmetric maps [0, 1] to [-1, 1]; z-scores are not in [0, 1]")
        self.norm_output = norm_output
        if norm in FIXED_NORMS:
            self._affine = fixed_affine(norm, norm_max, self.bands)
        else:
            stats = {s["band"]: s for s in manifest["band_stats"]}
            missing_stats = [b for b in self.bands if b not in stats]
            if missing_stats:
                raise ValueError(f"manifest band_stats has no statistics for band(s) {missing_stats}")
            self._affine = band_affine([stats[b] for b in self.bands], norm)
        self._positions = [self.all_bands.index(b) for b in self.bands]
        self.index_ranges = {n: tuple(float(v) for v in (index_ranges or {}).get(n, INDICES[n].range))
                             for n in self.indices}
        self.index_stats = {n: check_index_stats(n, (index_stats or {})[n]) for n in self.indices
                            if n in (index_stats or {})}
        self.missing_value = image.get("missing_value")
        self.mask_indices = bool(mask_indices)
        self.qa_clear = tuple(qa_clear)
        self.reflectance = (float(reflectance_scale), float(reflectance_offset))
        self.shape = tuple(int(s) for s in image["shape"])
        self.dtype = image["dtype"]
        # XLA fuses the ~10 elementwise passes per channel: 2x (bands) to 8x (bands + 10
        # indices) faster in tf.data on CPU (bench/bench_seg_pipeline.py)
        self._compiled = tf.function(self._compute, jit_compile=True, autograph=False) if jit_compile else None
        self._compiled_padded = {}  # pad multiple -> compiled features + reflect padding

    @property
    def value_range(self):
        """(low, high) of every channel, or None when unbounded (z-score)."""
        if self.norm == "zscore":
            return None
        return (-1.0, 1.0) if self.norm_output == "symmetric" else (0.0, 1.0)

    @property
    def names(self):
        return self.bands + self.indices

    @property
    def n_channels(self):
        return len(self.names)

    def missing(self, image, valid=None):
        """bool ``[H, W, C]``: band value missing (missing_value, or the pixel is not valid)."""
        image = tf.convert_to_tensor(image)
        miss = tf.zeros(tf.shape(image), tf.bool)
        if self.missing_value is not None:
            miss = tf.equal(image, tf.cast(self.missing_value, image.dtype))
        if valid is not None:
            miss |= tf.equal(tf.cast(valid, tf.int32), 0)[..., tf.newaxis]
        return miss

    def __call__(self, image, valid=None, pad_multiple=0):
        """image: raw ``[..., H, W, C]`` of the dataset dtype; valid: ``[..., H, W]`` 0/1 or None.

        pad_multiple: also reflect-pad H and W to a multiple of it (``pad_to_multiple``),
        inside the same compiled function (one write of the features instead of two).
        """
        image = tf.convert_to_tensor(image)
        if valid is None:
            valid = tf.ones(tf.shape(image)[:-1], tf.uint8)
        valid = tf.convert_to_tensor(valid)
        if not pad_multiple:
            return (self._compiled or self._compute)(image, valid)

        def padded(i, v):
            return pad_to_multiple(self._compute(i, v), pad_multiple, "REFLECT")

        if self._compiled is None:
            return padded(image, valid)
        if pad_multiple not in self._compiled_padded:
            self._compiled_padded[pad_multiple] = tf.function(padded, jit_compile=True, autograph=False)
        return self._compiled_padded[pad_multiple](image, valid)

    def _compute(self, image, valid):
        miss = self.missing(image, valid)
        x = tf.cast(image, tf.float32)
        # raw bands: one vectorised affine + clip + fill over the selected channels
        scale, shift, low, high, fill = (tf.constant(v, tf.float32, shape=[len(self._affine)])
                                         for v in (list(zip(*self._affine)) or [()] * 5))
        if self._positions == list(range(len(self.all_bands))):  # all bands in order: no gather
            chosen, chosen_miss = x, miss
        else:
            positions = tf.constant(self._positions, tf.int32, shape=[len(self._positions)])
            chosen, chosen_miss = tf.gather(x, positions, axis=-1), tf.gather(miss, positions, axis=-1)
        if self.norm == "image_minmax":  # the tile's own range per band (all pixels), 0 for a constant band
            lo = tf.reduce_min(chosen, axis=[-3, -2], keepdims=True)
            span = tf.reduce_max(chosen, axis=[-3, -2], keepdims=True) - lo
            shift, scale = lo, tf.where(span > 0, 1.0 / tf.where(span > 0, span, 1.0), 0.0)
        # minimum/maximum: clip_by_value costs twice as much here
        out = tf.where(chosen_miss, fill, tf.minimum(tf.maximum((chosen - shift) * scale, low), high))
        if self.indices:
            out = self._with_indices(out, image, valid, miss)
        return 2.0 * out - 1.0 if self.norm_output == "symmetric" else out

    def _with_indices(self, out, image, valid, miss):
        values, oks = self.raw_indices(image, valid, miss)
        channels = []
        for name, value, ok in zip(self.indices, values, oks):
            if name in self.index_stats:
                st = self.index_stats[name]
                channels.append(scale_index(value, ok, st["min"], st["max"], st["q01"], st["q99"]))
                continue
            lo, hi = self.index_ranges[name]
            value = fill_nonfinite(value, lo, hi)
            value = tf.minimum(tf.maximum((value - lo) * (1.0 / max(hi - lo, _EPS)), 0.0), 1.0)
            channels.append(tf.where(ok, value, 0.0))
        return tf.concat([out, tf.experimental.numpy.moveaxis(tf.stack(channels), 0, -1)], -1)

    def raw_indices(self, image, valid=None, miss=None):
        """([index plane], [kept plane]) of the configured indices before normalisation:
        kept = none of the index's bands missing and, with ``mask_indices``, clear water."""
        miss = self.missing(image, valid) if miss is None else miss
        miss_planes = tf.experimental.numpy.moveaxis(miss, -1, 0)
        raw = role_planes(image, self.all_bands)
        roles = band_roles(self.all_bands)
        keep = None
        if self.mask_indices:
            keep = clear_water_plane(raw, self.qa_clear)
            for role in ("qa", "dem"):  # a missing QA or DEM value is not clear water
                if role in roles:
                    keep &= tf.logical_not(miss_planes[roles[role]])
        values = index_planes(raw, self.indices, *self.reflectance)
        oks = []
        for name in self.indices:
            ok = tf.logical_not(tf.reduce_any(tf.stack([miss_planes[roles[b]] for b in INDICES[name].bands]), 0))
            oks.append(ok if keep is None or not INDICES[name].masked else ok & keep)
        return values, oks


def check_index_stats(name, stats):
    """{min, max, q01, q99} as floats; ValueError naming the index when one is absent or not finite."""
    out = {}
    for key in ("min", "max", "q01", "q99"):
        value = stats.get(key) if isinstance(stats, dict) else None
        if value is None or not math.isfinite(float(value)):
            raise ValueError(f"index_stats of {name!r} has no finite {key!r}")
        out[key] = float(value)
    return out


def fill_nonfinite(value, low, high):
    """NaN and -inf -> ``low``, +inf -> ``high``."""
    value = tf.where(tf.math.is_nan(value) | tf.equal(value, -math.inf), tf.cast(low, value.dtype), value)
    return tf.where(tf.equal(value, math.inf), tf.cast(high, value.dtype), value)


def scale_index(value, ok, low, high, q01, q99):
    """The winner's scaling of an index: not ``ok`` (masked, missing), NaN and -inf -> ``low`` (its
    minimum), +inf -> ``high`` (its maximum), then (clip(x, q01, q99) - q01) / (q99 - q01 + 1e-10)."""
    value = fill_nonfinite(tf.where(ok, value, tf.cast(low, value.dtype)), low, high)
    return (tf.minimum(tf.maximum(value, q01), q99) - q01) * (1.0 / (q99 - q01 + KELP_EPS))


# ---------------------------------------------------------------- padding


# Map inputs are padded to a multiple of this (5 stride-2 stages of a UNet encoder); the one owner.
PAD_MULTIPLE = 32


def padded_shape(shape, multiple=PAD_MULTIPLE):
    """``shape`` (height, width, ...) with every side padded up to a multiple of ``multiple``."""
    return tuple(int(n) + sum(padding_for(int(n), multiple)) for n in shape)


def padding_for(size, multiple=PAD_MULTIPLE):
    """(before, after) pixels that pad ``size`` to a multiple of ``multiple``: 350 -> (1, 1)."""
    total = -int(size) % int(multiple)
    return total // 2, total - total // 2


def pad_to_multiple(x, multiple=PAD_MULTIPLE, mode="REFLECT", constant=0):
    """Pad the two axes before the last of ``x`` ([H, W, C] or [B, H, W, C]) to a multiple.

    mode: REFLECT (images), SYMMETRIC or CONSTANT (masks; ``constant`` value).
    Static shapes in, static shapes out.
    """
    x = tf.convert_to_tensor(x)
    height, width = x.shape[-3], x.shape[-2]
    if height is None or width is None:
        raise ValueError(f"pad_to_multiple needs static H and W, got shape {x.shape}")
    pads = [[0, 0]] * (x.shape.rank - 3) + [list(padding_for(height, multiple)), list(padding_for(width, multiple)), [0, 0]]
    if mode.upper() == "CONSTANT":
        return tf.pad(x, pads, constant_values=tf.cast(constant, x.dtype))
    return tf.pad(x, pads, mode=mode.upper())


def crop_padding(x, height, width, multiple=PAD_MULTIPLE):
    """Undo ``pad_to_multiple``: the central ``[height, width]`` of the two axes before the
    last of ``x`` ([Hp, Wp, C] or [B, Hp, Wp, C])."""
    top, _ = padding_for(height, multiple)
    left, _ = padding_for(width, multiple)
    return x[..., top:top + height, left:left + width, :]
