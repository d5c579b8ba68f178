"""Tile embeddings for near-duplicate grouping: flat DEM thumbnails group by their constant."""
import numpy as np

from foldnet.io import folds
from foldnet.raster import tiff

# the kelp layout's bands: the embedding is the DEM's
BANDS = tiff.Bands(names=("SWIR", "NIR", "R", "G", "B", "QA", "DEM"), missing_value=-32768,
                   valid_bands=(0, 1, 2, 3, 4), qa=5, dem=6, embed_bands=(6,))


def tile(dem, seed):
    image = np.random.default_rng(seed).integers(7000, 12000, (32, 32, 7)).astype(np.int16)
    image[:, :, 6] = dem
    return image


def embed(image):
    return tiff.embedding(image, tiff.missing_of(image, BANDS), BANDS)


def test_flat_dems_group_when_their_constant_agrees():
    ramp = np.add.outer(np.arange(32), np.arange(32)).astype(np.int16)
    emb = np.stack([embed(tile(0, 1)), embed(tile(0, 2)),  # two all-water tiles (DEM 0 everywhere)
                    embed(tile(5, 3)),  # flat at another height
                    embed(tile(ramp, 4)), embed(tile(ramp + 3, 5)),  # the same slope, shifted
                    embed(tile(-32768, 6))])  # DEM all missing: nothing to compare
    norms = np.linalg.norm(emb, axis=1)
    np.testing.assert_allclose(norms[:5], 1.0, rtol=1e-5)
    assert norms[5] == 0.0
    cos = emb @ emb.T
    assert cos[0, 1] > 0.999  # the flat-0 tiles used to be zero vectors, never grouped
    assert abs(cos[0, 2]) < 0.3 and abs(cos[0, 3]) < 0.3 and cos[3, 4] > 0.999
    groups = folds.duplicate_groups(emb, 0.97)
    assert groups[0] == groups[1] and groups[3] == groups[4]
    assert len({groups[0], groups[2], groups[3], groups[5]}) == 4
