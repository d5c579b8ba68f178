"""foldnet.tasks.base.classification."""
