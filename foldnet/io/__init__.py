"""foldnet.io."""
