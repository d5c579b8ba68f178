"""foldnet.engine."""
