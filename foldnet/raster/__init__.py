"""Layer 2, multi-band rasters shared by the map tasks: TIFF reading, spectral features, dihedral/TTA
views and their inverses, band statistics, map submissions. Imports core and io."""
