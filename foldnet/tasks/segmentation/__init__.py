"""foldnet.tasks.base.segmentation."""
