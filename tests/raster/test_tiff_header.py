"""A TIFF whose header claims a huge size is refused from the header, naming the file (issue 21 item 9:
a header claiming 100000 x 100000 x 7 ended in "out of memory" naming no file)."""
import struct

import numpy as np
import pytest
import tifffile

import foldnet  # noqa: F401
from foldnet.raster import tiff


def _claim(path, width, height):
    """Rewrite the ImageWidth / ImageLength tags of the one-page TIFF ``path`` in place."""
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        spots = [(tags["ImageWidth"], width), (tags["ImageLength"], height)]
        order = tif.byteorder
    with open(path, "r+b") as f:
        for tag, value in spots:
            f.seek(tag.valueoffset)
            f.write(struct.pack(order + ("I" if tag.dtype == 4 else "H"), value))


def test_a_header_claiming_a_huge_image_is_refused_before_reading(tmp_path):
    path = str(tmp_path / "tile_satellite.tif")
    tifffile.imwrite(path, np.ones((4, 4, 7), np.int16), planarconfig="contig")
    assert tiff.read_tiff(path).shape == (4, 4, 7)
    _claim(path, 60000, 60000)
    with pytest.raises(tiff.BadTile, match=r"tile_satellite.tif: its header claims 60000x60000x7"):
        tiff.read_tiff(path)
    small = str(tmp_path / "small.tif")
    tifffile.imwrite(small, np.ones((4, 4), np.uint8))
    with pytest.raises(tiff.BadTile, match="more than the 10 this tool reads"):
        tiff.read_tiff(small, max_values=10)
