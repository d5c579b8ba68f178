"""The path policy of every layout (issue 21 item 2): a file that resolves outside the data folder
(a symlinked Kelp tile, a symlinked BioMassters file) is refused unless --allow_outside, which applies
to the map layouts too (it was refused as "does not apply" for the temporal layout)."""
import os
import shutil

import pytest

import foldnet  # noqa: F401
from foldnet.commands import convert
from foldnet.tasks.segmentation import demo_data as seg_demo_data
from foldnet.tasks.temporal import demo_data as temporal_demo_data


def _move_out_and_link(folder, outside):
    """Move the first file of ``folder`` to ``outside`` and leave a symlink to it; return its name."""
    name = sorted(os.listdir(folder))[0]
    os.makedirs(outside, exist_ok=True)
    shutil.move(os.path.join(folder, name), os.path.join(outside, name))
    os.symlink(os.path.join(outside, name), os.path.join(folder, name))
    return name


@pytest.mark.parametrize("kind", ["kelp", "biomass"])
def test_a_symlink_out_of_the_data_folder_is_refused_unless_allow_outside(tmp_path, capsys, kind):
    data = tmp_path / kind
    if kind == "kelp":
        seg_demo_data.build_kelp_dataset(str(data), n_places=4, acquisitions=2, size=16, seed=1)
        folder = data / "train_satellite"
    else:
        temporal_demo_data.build_biomass_dataset(str(data), n_train=10, n_test=2, size=16, seed=1)
        folder = data / "train_features"
    name = _move_out_and_link(str(folder), str(tmp_path / "elsewhere"))
    args = ["--data_dir", str(data), "--n_folds", "2", "--workers", "1", "--no_progress"]
    assert convert.main(args) == 2
    err = capsys.readouterr().err
    assert "outside the data folder" in err and name in err and "--allow_outside" in err
    assert not (data / "tfrec").exists()
    assert convert.main(args + ["--allow_outside"]) == 0
    assert (data / "tfrec" / "manifest.json").is_file()


def test_a_biomassters_training_chip_with_a_target_but_no_features_is_named(tmp_path, capsys):
    """Issue 21 item 5: such a chip was silently dropped."""
    data = tmp_path / "biomass"
    temporal_demo_data.build_biomass_dataset(str(data), n_train=10, n_test=2, size=16, seed=1)
    chip = sorted(os.listdir(data / "train_agbm"))[0][:-len("_agbm.tif")]
    for name in os.listdir(data / "train_features"):
        if name.startswith(chip + "_"):
            os.remove(data / "train_features" / name)
    meta = [f for f in os.listdir(data) if f.startswith("features_metadata")]
    for m in meta:  # the metadata must not list the removed files either
        lines = (data / m).read_text().splitlines()
        (data / m).write_text("\n".join(line for line in lines if not line.startswith(chip + "_")
                                        and f",{chip}_" not in line) + "\n")
    assert convert.main(["--data_dir", str(data), "--n_folds", "2", "--workers", "1", "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert f"chip {chip} has a target but no feature file" in err
