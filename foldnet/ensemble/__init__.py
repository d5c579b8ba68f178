"""foldnet.ensemble.cli."""
