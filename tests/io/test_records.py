"""TFRecord output of create_tfrecords: shards, manifest, label map, image formats, reruns."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

import foldnet  # noqa: F401
from foldnet.commands.convert import main
from foldnet.core.errors import DataError
from foldnet.io import images, records
from foldnet.tasks.classification import convert as convert_mod
from foldnet.tasks.classification.convert import create_tfrecords
from foldnet.tasks.classification.labels import LabelMap, load_label_map
from tests.paths import ROOT as ROOT_DIR

ROOT = ROOT_DIR


def read_records(files):
    """Every example of ``files`` as a dict of numpy values, in file order."""
    out = []
    for serialized in tf.data.TFRecordDataset(files):
        ex = records.parse_example(serialized)
        out.append({k: v.numpy() for k, v in ex.items()})
    return out


def decode(image_bytes):
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False).numpy()


def convert(root, **kw):
    kw.setdefault("n_folds", 3)
    kw.setdefault("workers", 1)
    return create_tfrecords(data_dir=root, progress=False, **kw)


def shard_mtimes(tfrec_dir):
    return {n: os.stat(os.path.join(tfrec_dir, n)).st_mtime_ns for n in os.listdir(tfrec_dir)}


# ---------------------------------------------------------------- the tiny_tfrec fixture


def test_manifest_fields_and_label_map_round_trip(tiny_tfrec, tiny_turtle_dir):
    m = records.load_manifest(tiny_tfrec)
    assert m["dir"] == tiny_tfrec and m["format_version"] == 1 and m["task"] == "classification"
    assert (m["n_folds"], m["n_classes"], m["n_examples"]) == (3, 6, 60)
    assert sum(f["n_examples"] for f in m["folds"]) == 60 and m["test"]["n_examples"] == 12
    assert [f["fold"] for f in m["folds"]] == [0, 1, 2]
    assert m["image_stats"]["height"] == {"min": 16, "max": 16, "mean": 16.0}
    assert m["flags"]["n_folds"] == 3 and m["flags"]["seed"] == 33  # the Turtle Recall layout: the original's seed
    assert m["skipped"] == [] and m["n_grouped"] == 0 and len(m["fingerprint"]) == 64
    train = pd.read_csv(os.path.join(tiny_turtle_dir, "train.csv"))
    extra = pd.read_csv(os.path.join(tiny_turtle_dir, "extra_images.csv"))
    expected = LabelMap.fit(pd.concat([train, extra])["turtle_id"], original=train["turtle_id"])
    lm = load_label_map(m)
    assert lm == expected and lm.n_classes == 6 and len(lm.original) == 4 and lm.new_label == "new_turtle"


def test_output_dir_gets_umask_permissions_not_mkdtemp_0700(tiny_tfrec):
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tiny_tfrec).st_mode & 0o777 == 0o777 & ~umask


def test_shards_hold_exactly_the_folds_and_test_set(tiny_tfrec, tiny_turtle_dir):
    m = records.load_manifest(tiny_tfrec)
    folds = pd.read_csv(os.path.join(tiny_tfrec, "folds.csv"), dtype={"id": str, "label": str})
    assert list(folds.columns) == ["id", "label", "fold"]
    lm = load_label_map(m)
    for part in m["folds"]:
        recs = read_records(records.fold_files(m, part["fold"]))
        assert len(recs) == part["n_examples"]
        in_fold = folds[folds["fold"] == part["fold"]]
        assert sorted(r["id"].decode() for r in recs) == sorted(in_fold["id"])
        for r in recs:
            assert lm.labels[r["label"]] == r["label_str"].decode()
            assert r["label_str"].decode() == in_fold.set_index("id").at[r["id"].decode(), "label"]
    test = read_records(records.test_files(m))
    assert [r["id"].decode() for r in test] == list(pd.read_csv(os.path.join(tiny_turtle_dir, "test.csv"))["image_id"])
    assert {int(r["label"]) for r in test} == {-1} and {r["label_str"] for r in test} == {b""}


def test_jpeg_bytes_are_kept_as_they_are(tiny_tfrec, tiny_turtle_dir):
    m = records.load_manifest(tiny_tfrec)
    recs = read_records(records.fold_files(m, [0, 1, 2]) + records.test_files(m))
    assert len(recs) == 72
    for r in recs:
        with open(os.path.join(tiny_turtle_dir, "images", r["id"].decode() + ".JPG"), "rb") as f:
            assert r["image"] == f.read()
        assert (r["height"], r["width"]) == (16, 16)


def test_fold_files_order_and_unknown_fold(tiny_tfrec):
    m = records.load_manifest(tiny_tfrec)
    assert records.fold_files(m, [2, 0]) == [os.path.join(tiny_tfrec, "train-fold2-000.tfrec"),
                                             os.path.join(tiny_tfrec, "train-fold0-000.tfrec")]
    with pytest.raises(ValueError, match="no fold"):
        records.fold_files(m, 3)


def test_load_manifest_explains_missing_and_incomplete_dirs(tmp_path, tiny_tfrec):
    with pytest.raises(DataError, match="does not exist"):
        records.load_manifest(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="incomplete: no manifest.json"):
        records.load_manifest(str(tmp_path))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_bytes(open(os.path.join(tiny_tfrec, "manifest.json"), "rb").read())
    with pytest.raises(DataError, match="missing") as e:
        records.load_manifest(str(broken))
    assert "test-000.tfrec" in e.value.problems and "label_map.json" in e.value.problems


# ---------------------------------------------------------------- sharding


def test_shard_size_in_examples_gives_the_expected_files(turtle_copy):
    m = convert(turtle_copy, shard_size="7")
    for part in m["folds"]:
        n = part["n_examples"]
        assert len(part["files"]) == -(-n // 7)
        counts = [len(read_records(f)) for f in records.fold_files(m, part["fold"])]
        assert counts == [7] * (n // 7) + ([n % 7] if n % 7 else [])
    assert m["test"]["files"] == ["test-000.tfrec", "test-001.tfrec"]
    assert [len(read_records(f)) for f in records.test_files(m)] == [7, 5]


def test_shard_size_in_bytes_caps_each_file(turtle_copy):
    m = convert(turtle_copy, shard_size="3KB")
    files = [f for part in m["folds"] for f in records.fold_files(m, part["fold"])]
    assert len(files) > 3
    assert all(os.path.getsize(f) <= 3000 for f in files)
    assert sum(len(read_records(f)) for f in files) == 60


@pytest.mark.parametrize("text,expected", [
    ("1000", records.ShardLimit(examples=1000)),
    ("150MB", records.ShardLimit(bytes=150_000_000)),
    ("1.5GB", records.ShardLimit(bytes=1_500_000_000)),
    ("64MiB", records.ShardLimit(bytes=64 * 2**20)),
])
def test_parse_shard_size(text, expected):
    assert records.parse_shard_size(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-5", "1.5", "12 parsecs", "MB"])
def test_parse_shard_size_rejects_nonsense(text):
    with pytest.raises(ValueError, match="shard size"):
        records.parse_shard_size(text)


# ---------------------------------------------------------------- image formats


def save(arr, path, **kw):
    Image.fromarray(arr).save(path, **kw)
    return os.path.basename(path)


def format_zoo(folder):
    """{file name: expected RGB pixels after decoding with channels=3} for lossless inputs."""
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (9, 11), dtype=np.uint8)
    rgba = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    zoo = {
        save(rgb, f"{folder}/rgb.png"): rgb,
        save(gray, f"{folder}/gray.png"): np.stack([gray] * 3, -1),
        save(rgba, f"{folder}/rgba.png"): rgba[..., :3],
        save(rgb, f"{folder}/rgb.bmp"): rgb,
        save(gray, f"{folder}/gray.pgm"): np.stack([gray] * 3, -1),
        save(rgba, f"{folder}/rgba.webp", lossless=True): rgba[..., :3],
        save(rgb, f"{folder}/rgb.tif"): rgb,
    }
    Image.fromarray(gray16).save(f"{folder}/gray16.png")
    zoo["gray16.png"] = np.stack([(gray16 // 257).astype(np.uint8)] * 3, -1)
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(f"{folder}/anim.gif", save_all=True, append_images=[palette.rotate(90)])
    zoo["anim.gif"] = np.asarray(palette.convert("RGB"))  # the first frame
    return zoo


def write_file_layout(root, names):
    labels = [f"c{i % 2}" for i in range(len(names))]
    pd.DataFrame({"image_id": [f"i{i}" for i in range(len(names))], "label": labels, "file": names}).to_csv(
        os.path.join(root, "train.csv"), index=False)


def test_any_format_decodes_to_the_same_3_channel_pixels(tmp_path):
    os.makedirs(tmp_path / "images")
    zoo = format_zoo(str(tmp_path / "images"))
    names = list(zoo)
    write_file_layout(str(tmp_path), names)
    m = convert(str(tmp_path), train_csv="train.csv", path_col="file", n_folds=2)
    by_id = {r["id"].decode(): r for r in read_records(records.fold_files(m, [0, 1]))}
    for i, name in enumerate(names):
        r = by_id[f"i{i}"]
        assert r["image"][:4] == b"\x89PNG", name  # only JPEG/PNG reach the training pipeline
        assert np.array_equal(decode(r["image"]), zoo[name]), name
    with open(tmp_path / "images" / "rgb.png", "rb") as f:
        assert by_id[f"i{names.index('rgb.png')}"]["image"] == f.read()  # PNG bytes kept as they are


def test_grayscale_and_cmyk_jpeg(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    gray = Image.fromarray(rgb).convert("L")
    gray.save(tmp_path / "g.jpg", quality=95)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "k.jpg", quality=95)
    kept = images.load_image(str(tmp_path / "g.jpg"))
    assert not kept.reencoded and decode(kept.data).shape == (8, 8, 3)
    cmyk = images.load_image(str(tmp_path / "k.jpg"))
    assert cmyk.reencoded and cmyk.format == "PNG" and decode(cmyk.data).shape == (8, 8, 3)


def test_max_side_resizes_large_images_only(tmp_path):
    rng = np.random.default_rng(1)
    save(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), tmp_path / "big.jpg", quality=90)
    save(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), tmp_path / "big.png")
    save(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8), tmp_path / "small.jpg", quality=90)
    big_jpg = images.load_image(str(tmp_path / "big.jpg"), max_side=20, jpeg_quality=80)
    assert (big_jpg.height, big_jpg.width, big_jpg.format) == (15, 20, "JPEG") and big_jpg.data[:2] == b"\xff\xd8"
    big_png = images.load_image(str(tmp_path / "big.png"), max_side=20)
    assert (big_png.height, big_png.width, big_png.format) == (20, 15, "PNG")
    assert decode(big_png.data).shape == (20, 15, 3)
    small = images.load_image(str(tmp_path / "small.jpg"), max_side=20)
    assert not small.reencoded and small.data == (tmp_path / "small.jpg").read_bytes()


def test_max_side_in_the_manifest_image_stats(turtle_copy):
    m = convert(turtle_copy, max_side=8)
    assert m["image_stats"]["width"] == {"min": 8, "max": 8, "mean": 8.0} and m["flags"]["max_side"] == 8
    assert {(int(r["height"]), int(r["width"])) for r in read_records(records.test_files(m))} == {(8, 8)}


# ---------------------------------------------------------------- reruns and workers


def test_rerun_is_a_no_op_until_an_input_changes(turtle_copy, capsys):
    first = convert(turtle_copy)
    before = shard_mtimes(first["dir"])
    second = convert(turtle_copy)
    assert "shards are current" in capsys.readouterr().out
    assert shard_mtimes(first["dir"]) == before and second["fingerprint"] == first["fingerprint"]
    csv = os.path.join(turtle_copy, "test.csv")
    df = pd.read_csv(csv)
    df.iloc[:-1].to_csv(csv, index=False)  # one test image fewer
    third = convert(turtle_copy)
    assert third["fingerprint"] != first["fingerprint"] and third["test"]["n_examples"] == 11
    after = shard_mtimes(first["dir"])
    assert all(after[n] != before[n] for n in before)


def test_overwrite_and_changed_flags_rewrite(turtle_copy):
    first = convert(turtle_copy)
    before = shard_mtimes(first["dir"])
    convert(turtle_copy, overwrite=True)
    assert all(shard_mtimes(first["dir"])[n] != before[n] for n in before)
    assert convert(turtle_copy, seed=1)["fingerprint"] != first["fingerprint"]


def test_workers_do_not_import_tensorflow():
    probe = "'tensorflow' in __import__('sys').modules"
    assert list(images.map_images(eval, [probe, probe], workers=2, desc="", progress=False)) == [False, False]


def test_parallel_workers_write_the_same_shards(turtle_copy, tiny_tfrec):
    m = convert(turtle_copy, workers=2)
    for name in os.listdir(tiny_tfrec):
        if name.endswith(".tfrec") or name == "folds.csv":
            with open(os.path.join(tiny_tfrec, name), "rb") as a, open(os.path.join(m["dir"], name), "rb") as b:
                assert a.read() == b.read(), name


def test_remote_out_dir_via_gfile(turtle_copy):
    out = "ram://foldnet-test/tfrec"
    m = convert(turtle_copy, out_dir=out)
    loaded = records.load_manifest(out)
    assert loaded["fingerprint"] == m["fingerprint"]
    assert len(read_records(records.fold_files(loaded, [0, 1, 2]))) == 60
    assert convert(turtle_copy, out_dir=out)["fingerprint"] == m["fingerprint"]  # current: not rewritten


def test_cli_script_end_to_end(turtle_copy):
    cmd = [sys.executable, os.path.join(ROOT, "create_tfrecords.py"), "--data_dir", turtle_copy, "--n_folds", "3",
           "--workers", "2", "--shard_size", "10", "--no_progress"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "wrote 60 training examples" in run.stdout
    m = records.load_manifest(os.path.join(turtle_copy, "tfrec"))
    assert [len(f["files"]) for f in m["folds"]] == [2, 2, 2] and m["flags"]["shard_size"] == "10"


def test_help_lists_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ["--data_dir", "--out_dir", "--n_folds", "--seed", "--group_duplicates", "--shard_size",
                 "--max_side", "--jpeg_quality", "--workers", "--skip_bad", "--overwrite", "--path_pattern"]:
        assert flag in out
    assert "(default: 5)" in out and "(default: 150MB)" in out and "(default: 33" in out and "42 for every other layout" in out


# ---------------------------------------------------------------- images larger than the members need

def test_member_dims_read_from_the_model_configs():
    dims = convert_mod.member_dims()
    assert dims["ef1b7"] == 512 and dims["demo"] == 32 and max(dims.values()) == 512


def test_oversize_warning_only_far_above_the_largest_dim():
    def stats(h, w):
        return {"height": {"min": h, "max": h, "mean": float(h)}, "width": {"min": w, "max": w, "mean": float(w)}}

    dims = {"a": 256, "b": 512}
    warning = convert_mod.oversize_warning(stats(3000, 4000), dims)
    assert "--max_side 1024" in warning and "models/b.yaml" in warning and "7.8x" in warning
    assert convert_mod.oversize_warning(stats(1200, 1536), dims) is None  # 3x: not far larger
    assert convert_mod.oversize_warning(stats(3000, 4000), {}) is None
    assert convert_mod.oversize_warning({"height": {}, "width": {}}, dims) is None


def test_converter_warns_when_bytes_are_kept_far_above_member_dims(turtle_copy, capsys, monkeypatch):
    monkeypatch.setattr(convert_mod, "member_dims", lambda: {"tiny": 2})  # the images are 3x+ larger
    convert(turtle_copy, overwrite=True)
    assert "warning: images are kept at a mean longer side" in capsys.readouterr().err
    convert(turtle_copy, overwrite=True, max_side=8)  # resized on purpose: no warning
    assert "warning: images are kept" not in capsys.readouterr().err
