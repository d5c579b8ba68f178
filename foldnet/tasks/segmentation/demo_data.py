"""A synthetic Kelp Wanted dataset in the real layout (``python -m foldnet.tasks.classification.demo_data --kind kelp``).

No download: every tile is synthesised, deterministically from the seed.

* Layout as distributed: ``train_satellite/<tile>_satellite.tif`` (7 int16
  bands in the real order SWIR, NIR, R, G, B, QA, DEM), ``train_kelp/<tile>_kelp.tif``
  (uint8 0/1), ``test_satellite/``, ``metadata_fTq0l2T.csv`` (tile_id, type,
  filename, in_train), plus ``answers/<tile>_kelp.tif`` (the hidden test masks)
  and ``places.csv`` (tile_id, place, split, sensor: the truth of the grouping).
* Values: Landsat Collection 2 Level-2 surface reflectance in its int16
  scaling, DN = (reflectance + 0.2) / 2.75e-5 (so reflectance 0 is 7273 and
  0.3 is 18182); -32768 marks a missing pixel; QA 0 = clear, 1 = cloud; DEM in
  metres, 0 over the sea.
* Scenes: each place has a DEM (a smooth random field; land where it is
  high, a few places all sea) and a kelp bed zone of blobs in the sea within a
  few pixels of the coast; a quarter of the places grow no kelp. Each place is
  seen in several acquisitions (near-duplicate tiles: same DEM and coast, kelp
  extent, clouds, haze, sun glint and noise differ), so folds must keep a place
  together. Kelp raises NIR over water (NDVI about 0.2-0.55 with density);
  land vegetation has a higher NDVI still; glint and turbid water raise NIR
  and red over patches of sea; clouds (flagged in QA) brighten every band; a
  fifth of the acquisitions have striped missing data (like Landsat 7 SLC-off)
  in the five spectral bands, and a few have no DEM.
* Three sensors (``places.csv`` column ``sensor``: LT05, LE07, LC08-like), one per
  acquisition, each with its own per-band gain and offset; every acquisition has its
  own haze (additive, strongest in blue, a smooth field over the tile). The optics
  blur every band by about 0.6 px (a Gaussian PSF), so pixels at the edge of a kelp
  bed (and at the coast) are mixed.
* The training masks are noisy as hand labels are: at the bed edges pixels are
  flipped (a third of the boundary), and a few tiles have their labels grown or
  shrunk by one pixel; small beds are sometimes missed. The hidden test masks
  (``answers/``) are the true extent.
* About a third of the tiles have no kelp. Test tiles come from held-out places.
"""
import hashlib
import os

import numpy as np
import pandas as pd

MISSING = -32768
KELP_BAND_ORDER = ("SWIR", "NIR", "R", "G", "B", "QA", "DEM")
# Surface reflectance of the cover types in band order SWIR, NIR, R, G, B.
WATER = np.array([0.010, 0.020, 0.030, 0.050, 0.070])
VEGETATION = np.array([0.150, 0.320, 0.050, 0.080, 0.040])
BARE = np.array([0.260, 0.250, 0.190, 0.150, 0.120])
KELP_GAIN = np.array([0.005, 0.120, 0.010, 0.008, 0.002])  # added to WATER at kelp density 1
GLINT = np.array([0.015, 0.050, 0.035, 0.030, 0.030])  # added at glint strength 1
CLOUD = np.array([0.350, 0.450, 0.480, 0.500, 0.520])
# Per-sensor (gain, offset) of the reflectance, bands SWIR, NIR, R, G, B: three Landsat-like sensors.
SENSORS = {
    "LT05": (np.array([0.94, 1.06, 0.95, 1.03, 1.07]), np.array([0.004, -0.004, 0.003, 0.004, 0.008])),
    "LE07": (np.array([1.04, 0.95, 1.05, 0.97, 0.95]), np.array([-0.002, 0.005, -0.002, 0.002, 0.004])),
    "LC08": (np.ones(5), np.zeros(5)),
}
HAZE = np.array([0.15, 0.35, 0.65, 0.85, 1.0])  # relative strength of haze per band (scattering ~ 1/wavelength)
PSF_SIGMA = 0.6  # pixels


def _blur_bands(refl, sigma=PSF_SIGMA):
    """Gaussian point-spread function over every band of ``refl`` [H, W, C] (mixed pixels at edges)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(refl, (sigma, sigma, 0), mode="reflect")


def noisy_labels(rng, mask, allowed=None, flip=0.33, grow_shrink=0.15, drop_small=0.3):
    """A hand label of the true ``mask`` (uint8 0/1): a third of the boundary pixels flipped, sometimes the
    whole label grown or shrunk by one pixel, small connected parts sometimes missed; ``allowed`` (bool)
    bounds where a label can be added."""
    from scipy.ndimage import binary_dilation, binary_erosion, label

    true = mask.astype(bool)
    if not true.any():
        return mask.astype(np.uint8)
    out = true.copy()
    u = rng.random()
    if u < grow_shrink:
        out = binary_dilation(out)
    elif u < 2 * grow_shrink:
        out = binary_erosion(out)
    edge = binary_dilation(true) & ~binary_erosion(true)
    out = np.where(edge & (rng.random(true.shape) < flip), ~out, out)
    parts, n = label(out)
    for k in range(1, n + 1):
        part = parts == k
        if part.sum() <= 6 and rng.random() < drop_small:
            out[part] = False
    if allowed is not None:
        out &= allowed
    return out.astype(np.uint8)


def to_dn(reflectance):
    """Landsat C2 L2 surface-reflectance scaling: DN = (reflectance + 0.2) / 2.75e-5, as int16."""
    return np.clip(np.rint((reflectance + 0.2) / 2.75e-5), 0, 32767).astype(np.int16)


def tile_id(i, seed):
    """A Kelp-like tile id: two letters and six digits."""
    h = hashlib.sha1(f"foldnet-kelp-{seed}-{i}".encode()).hexdigest()
    return chr(65 + int(h[0:2], 16) % 26) + chr(65 + int(h[2:4], 16) % 26) + f"{int(h[4:12], 16) % 1000000:06d}"


def _field(rng, size, sigma):
    """Smooth random field, zero mean, unit std."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.normal(size=(size, size)), sigma, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-12)


def make_place(rng, size, kelp_free):
    """Fixed features of one place: DEM (metres, 0 = sea), land mask, vegetation mask, kelp potential."""
    from scipy.ndimage import distance_transform_edt

    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) * 3.0
    relief = _field(rng, size, size / 8) * 0.6 + ramp
    all_sea = rng.random() < 0.15
    level = np.inf if all_sea else np.quantile(relief, rng.uniform(0.4, 0.85))
    land = relief > level
    dem = np.where(land, 1 + (relief - level) * rng.uniform(80, 300), 0.0)
    vegetation = land & (_field(rng, size, size / 10) > rng.uniform(-0.8, 0.5))
    potential = np.zeros((size, size))
    if land.any() and not kelp_free:
        dist = distance_transform_edt(~land)
        zone = (~land) & (dist >= 1) & (dist <= max(3.0, size / 9))
        blobs = _field(rng, size, max(1.0, size / 28))
        potential = np.where(zone, np.clip(blobs - 0.2, 0, None), 0.0)  # > 0 where kelp can grow
    return {"dem": np.rint(dem).astype(np.int16), "land": land, "vegetation": vegetation, "potential": potential}


def make_acquisition(rng, place, size, sensor="LC08"):
    """(image int16 [size, size, 7], true kelp mask uint8) of one acquisition of ``place`` by ``sensor``."""
    land, veg = place["land"], place["vegetation"]
    refl = np.where(veg[..., None], VEGETATION, np.where(land[..., None], BARE, WATER)).astype(np.float64)
    # kelp: this acquisition's extent is the part of the potential above a seasonal level
    season = rng.choice([0.0, 0.15, 0.35, 0.6, 9.0], p=[0.3, 0.3, 0.2, 0.1, 0.1])  # 9.0: no kelp
    density = np.clip((place["potential"] - season) * 2.5, 0, 1)
    kelp = density > 0.05
    refl += np.where(kelp, density, 0)[..., None] * KELP_GAIN
    sea = ~land
    if rng.random() < 0.35:  # sun glint / turbid water over a patch of sea
        glint = np.clip(_field(rng, size, size / 6) - rng.uniform(0.0, 1.0), 0, None) * rng.uniform(0.6, 1.3)
        refl += (np.where(sea, np.minimum(glint, 1.0), 0))[..., None] * GLINT
    refl = _blur_bands(refl)  # optics: mixed pixels at kelp edges and at the coast
    refl *= rng.uniform(0.9, 1.1)  # illumination
    haze = rng.uniform(0.0, 0.03) * np.clip(1 + 0.5 * _field(rng, size, size / 4), 0, None)
    refl += haze[..., None] * HAZE  # haze (not in QA), strongest in blue
    gain, offset = SENSORS[sensor]
    refl = refl * gain + offset
    refl += rng.normal(0, 0.008, refl.shape)  # sensor noise
    qa = np.zeros((size, size), np.int16)
    if rng.random() < 0.4:  # clouds, flagged in QA; their soft edges are not
        opacity = np.clip(_field(rng, size, size / 7) - rng.uniform(0.3, 1.6), 0, 0.6) / 0.6
        refl = refl * (1 - opacity[..., None]) + CLOUD * opacity[..., None]
        qa[opacity > 0.5] = 1
    image = np.empty((size, size, 7), np.int16)
    image[:, :, :5] = to_dn(refl)
    image[:, :, 5] = qa
    image[:, :, 6] = place["dem"]
    if rng.random() < 0.2:  # SLC-off-like stripes of missing data in the spectral bands
        yy, xx = np.mgrid[0:size, 0:size]
        period = int(rng.integers(8, 14))
        stripes = ((xx + yy // 3 + int(rng.integers(period))) % period) < 2
        image[:, :, :5][stripes] = MISSING
    if rng.random() < 0.05:  # no DEM for this acquisition
        image[:, :, 6] = MISSING
    return image, kelp.astype(np.uint8)


def build_kelp_dataset(out_dir, n_places=40, acquisitions=4, size=64, test_fraction=0.2, seed=0):
    """Write the synthetic Kelp Wanted dataset into ``out_dir`` (replaced atomically, and only if this
    tool built it: demo_data.dataset_dir); return its path."""
    import tifffile

    from foldnet.core.errors import ConfigError
    from foldnet.io.demo import dataset_dir

    if n_places < 4 or acquisitions < 1 or size < 16:
        raise ConfigError("need --n_places >= 4, --acquisitions >= 1 and --image_size >= 16")
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(n_places * test_fraction)))
    test_places = set(rng.permutation(n_places)[:n_test].tolist())
    kelp_free = rng.random(n_places) < 0.25
    rows, places = [], []
    sensor_names = sorted(SENSORS)
    with dataset_dir(out_dir, "kelp", ("train_satellite", "train_kelp", "test_satellite", "answers")) as tmp:
        k = 0
        for p in range(n_places):
            place = make_place(rng, size, bool(kelp_free[p]))
            for _ in range(acquisitions):
                tid = tile_id(k, seed)
                k += 1
                sensor = sensor_names[int(rng.integers(len(sensor_names)))]
                image, mask = make_acquisition(rng, place, size, sensor)
                is_test = p in test_places
                if not is_test:  # hand labels: noisy at the edges, never on land
                    mask = noisy_labels(rng, mask, allowed=~place["land"])
                split = "test" if is_test else "train"
                # one page of H x W x 7, band-interleaved (planarconfig contig), as GDAL writes the
                # competition's tiles; tifffile would otherwise store H pages of W x 7
                tifffile.imwrite(os.path.join(tmp, f"{split}_satellite", f"{tid}_satellite.tif"), image,
                                 photometric="minisblack", planarconfig="contig")
                tifffile.imwrite(os.path.join(tmp, "answers" if is_test else "train_kelp", f"{tid}_kelp.tif"), mask)
                rows.append((tid, "satellite", f"{tid}_satellite.tif", not is_test))
                if not is_test:
                    rows.append((tid, "kelp", f"{tid}_kelp.tif", True))
                places.append((tid, f"place{p:03d}", split, sensor))
        pd.DataFrame(rows, columns=["tile_id", "type", "filename", "in_train"]).to_csv(
            os.path.join(tmp, "metadata_fTq0l2T.csv"), index=False)
        pd.DataFrame(places, columns=["tile_id", "place", "split", "sensor"]).to_csv(
            os.path.join(tmp, "places.csv"), index=False)
    return out_dir


# ---------------------------------------------------------------- On Cloud N (``--kind cloud``)

CLOUD_CHIP_BANDS = ("B02", "B03", "B04", "B08")  # Sentinel-2 blue, green, red, NIR
# Surface reflectance in band order B02, B03, B04, B08.
SURFACES = {"water": np.array([0.06, 0.05, 0.03, 0.02]), "vegetation": np.array([0.04, 0.08, 0.05, 0.35]),
            "bare": np.array([0.12, 0.15, 0.19, 0.25]), "snow": np.array([0.80, 0.78, 0.75, 0.60])}
CLOUD_REFL = np.array([0.55, 0.55, 0.56, 0.58])
# Per-sensor (gain, offset) of the reflectance, bands B02, B03, B04, B08: one sensor per location.
CLOUD_SENSORS = (
    (np.ones(4), np.zeros(4)),
    (np.array([1.08, 1.04, 0.97, 0.93]), np.array([0.010, 0.006, 0.002, -0.004])),
    (np.array([0.92, 0.97, 1.05, 1.08]), np.array([-0.004, 0.002, 0.006, 0.010])),
)
CLOUD_HAZE = np.array([1.0, 0.8, 0.6, 0.3])  # haze strength per band, blue strongest


def make_cloud_chip(rng, surface, size, sensor=0):
    """(bands uint16 [4, size, size] as Sentinel-2 L2A DN = reflectance x 10000, true cloud mask uint8) of a
    chip seen by ``sensor`` (an index into CLOUD_SENSORS)."""
    refl = np.zeros((size, size, 4))
    for name, share in surface.items():
        refl += share[..., None] * SURFACES[name]
    refl *= rng.uniform(0.85, 1.15)
    opacity = np.zeros((size, size))
    if rng.random() < 0.75:  # a quarter of the chips are clear
        opacity = np.clip(_field(rng, size, size / rng.uniform(5, 10)) - rng.uniform(-0.8, 1.2), 0, 0.8) / 0.8
    refl = refl * (1 - opacity[..., None]) + CLOUD_REFL * opacity[..., None]
    haze = rng.uniform(0.0, 0.05) * np.clip(1 + 0.5 * _field(rng, size, size / 4), 0, None)
    refl += haze[..., None] * CLOUD_HAZE  # thin haze, never labelled cloud
    gain, offset = CLOUD_SENSORS[sensor % len(CLOUD_SENSORS)]
    refl = refl * gain + offset
    refl += rng.normal(0, 0.01, refl.shape)
    dn = np.clip(np.rint(refl * 10000), 1, 65535).astype(np.uint16)  # 0 is the missing value
    return np.moveaxis(dn, -1, 0), (opacity > 0.3).astype(np.uint8)  # thin cloud edges are not labelled


def make_location_surface(rng, size):
    """Cover shares of one location: land/water from a smooth field; some locations snowy or desert."""
    land = 1 / (1 + np.exp(-3 * (_field(rng, size, size / 6) + rng.uniform(-1, 1))))
    kind = rng.choice(["vegetation", "bare", "snow"], p=[0.5, 0.3, 0.2])
    patches = 1 / (1 + np.exp(-3 * _field(rng, size, size / 8)))
    surface = {"water": 1 - land, "vegetation": land * (1 - patches) if kind != "vegetation" else land}
    if kind != "vegetation":
        surface[kind] = land * patches  # bright ground: snow / desert, confusable with cloud by brightness
    return surface


def _chip_id(key, used):
    """A chip id of four lowercase letters like On Cloud N's, unique within ``used`` (added to it)."""
    for attempt in range(1000):
        h = hashlib.sha1(f"foldnet-cloud-{key}-{attempt}".encode()).digest()
        chip = "".join(chr(97 + b % 26) for b in h[:4])
        if chip not in used:
            used.add(chip)
            return chip
    raise RuntimeError("no free chip id")


def build_cloud_dataset(out_dir, n_locations=12, chips_per_location=4, size=64, test_fraction=0.25, seed=0):
    """Write a synthetic On Cloud N dataset in the real layout into ``out_dir`` (replaced atomically, only if
    this tool built it); return its path.

    ``train_features/<chip>/{B02,B03,B04,B08}.tif`` (uint16), ``train_labels/<chip>.tif``
    (uint8 0/1), ``train_metadata.csv`` (chip_id, location, datetime), ``test_features/``,
    ``test_metadata.csv``, and ``answers/<chip>.tif`` (the hidden test masks). Chips of one
    location share its ground (water, vegetation, bright snow or desert patches) and its sensor
    (location k has sensor k mod 3 of CLOUD_SENSORS, each with its own per-band gain and offset); every chip has its own haze; clouds
    are smooth bright fields, their thin edges unlabelled. The training labels are noisy
    (``noisy_labels``: a third of the edge pixels flipped, the label grown or shrunk by a
    pixel on some chips, small parts sometimes missed); the hidden test masks are the true ones (opacity > 0.3).
    Test chips come from held-out locations.
    """
    import tifffile

    from foldnet.core.errors import ConfigError
    from foldnet.io.demo import dataset_dir

    if n_locations < 4 or chips_per_location < 1 or size < 16:
        raise ConfigError("need --n_places >= 4, --acquisitions >= 1 and --image_size >= 16")
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(n_locations * test_fraction)))
    test_locations = set(rng.permutation(n_locations)[:n_test].tolist())
    rows, used = {"train": [], "test": []}, set()
    with dataset_dir(out_dir, "cloud", ("train_features", "train_labels", "test_features", "answers")) as tmp:
        for loc in range(n_locations):
            surface = make_location_surface(rng, size)
            split = "test" if loc in test_locations else "train"
            for c in range(chips_per_location):
                chip = _chip_id(f"{seed}-{loc}-{c}", used)
                bands, mask = make_cloud_chip(rng, surface, size, sensor=loc)
                if split == "train":  # hand labels: noisy at the edges
                    mask = noisy_labels(rng, mask, grow_shrink=0.2)
                folder = os.path.join(tmp, f"{split}_features", chip)
                os.makedirs(folder)
                for name, band in zip(CLOUD_CHIP_BANDS, bands):
                    tifffile.imwrite(os.path.join(folder, f"{name}.tif"), band)
                tifffile.imwrite(os.path.join(tmp, "train_labels" if split == "train" else "answers", f"{chip}.tif"),
                                 mask)
                day = f"2020-{1 + (loc + c) % 12:02d}-{1 + c % 28:02d}T10:{c % 60:02d}:00Z"
                rows[split].append((chip, f"loc_{loc:02d}", day))
        for split, r in rows.items():
            pd.DataFrame(r, columns=["chip_id", "location", "datetime"]).to_csv(
                os.path.join(tmp, f"{split}_metadata.csv"), index=False)
    return out_dir


def kelp_from_args(out_dir, a):
    """``foldnet demo-data --kind kelp``: --n_places places x --acquisitions tiles of --image_size (64)."""
    return build_kelp_dataset(out_dir, n_places=a.n_places, acquisitions=a.acquisitions, size=a.image_size or 64,
                              seed=a.seed)


def cloud_from_args(out_dir, a):
    """``foldnet demo-data --kind cloud``: --n_places locations x --acquisitions chips of --image_size (64)."""
    return build_cloud_dataset(out_dir, n_locations=a.n_places, chips_per_location=a.acquisitions,
                               size=a.image_size or 64, seed=a.seed)
