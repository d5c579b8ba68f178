"""The one view vocabulary: every task's TTA views start with the same exact permutations."""
import pytest

from foldnet.core import transforms
from foldnet.core.errors import ConfigError


def test_photo_and_map_views_share_the_dihedral_prefix_in_one_order():
    assert transforms.PHOTO_VIEWS[:6] == transforms.MAP_VIEWS[:6] == transforms.DIHEDRAL
    for n in range(6):  # tta_number n means the same views for photos and maps
        assert transforms.map_views(n) == list(transforms.PHOTO_VIEWS[:n + 1])
    assert transforms.map_views(6)[-1] == "transpose"
    assert transforms.MAX_NUMBER == 9  # the config's bound: the longest vocabulary (photos)


def test_a_map_task_refuses_more_views_than_it_has():
    with pytest.raises(ConfigError, match="6 views besides the identity"):
        transforms.map_views(7)
    with pytest.raises(ConfigError):
        transforms.map_views(True)


def test_the_implementations_use_the_vocabulary():
    from foldnet.raster import views
    from foldnet.tasks.classification import augment

    assert views.TTA_VIEWS == transforms.MAP_VIEWS
    assert augment.TRANSFORMS == list(transforms.PHOTO_VIEWS) and augment.N_EXACT == len(transforms.DIHEDRAL)
