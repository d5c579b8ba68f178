"""foldnet.tasks.base.temporal."""
