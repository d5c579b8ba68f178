"""foldnet.tasks.base."""
