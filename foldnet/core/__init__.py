"""foldnet.core."""
