"""foldnet.raster."""
