"""foldnet.models.backbones."""
