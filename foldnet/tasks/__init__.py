"""Layer 3, one folder per task behind the typed seam of tasks.base (classification, segmentation,
temporal regression). A task imports the layers below and tasks.base, never another task."""
