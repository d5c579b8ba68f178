"""CSV tables of a layout (issue 21 items 5 and 9): rows named by the line they start on, a repeated
header column refused, a header-only optional table empty, a training label named like the new label
refused."""
import pytest

import foldnet  # noqa: F401
from foldnet.core.errors import DataError
from foldnet.io import tables


def test_line_numbers_count_blank_lines_and_quoted_line_breaks(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('image_id,turtle_id\na,t1\n\n\nb,"two\nlines"\nc,t3\n')
    df = tables.read_table(str(path), ["image_id"], [])
    assert list(df["image_id"]) == ["a", "b", "c"]
    assert list(df["source"]) == ["train.csv line 2", "train.csv line 5", "train.csv line 7"]


def test_a_repeated_header_column_is_refused(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("image_id,turtle_id,turtle_id\na,t1,t2\n")
    problems = []
    assert tables.read_table(str(path), ["image_id", "turtle_id"], problems) is None
    assert problems == ["train.csv: column(s) turtle_id appear more than once in the header"]


def test_header_only_optional_table_is_empty(tmp_path):
    path = tmp_path / "extra_images.csv"
    path.write_text("image_id,turtle_id\n")
    problems = []
    assert tables.read_table(str(path), ["image_id"], problems) is None and "header only" in problems[0]
    df = tables.read_table(str(path), ["image_id"], [], allow_empty=True)
    assert len(df) == 0 and "source" in df.columns


def test_turtle_layout_header_only_extra_images_and_a_label_named_like_the_new_label(turtle_copy):
    import os

    from foldnet.tasks.classification import layouts

    with open(os.path.join(turtle_copy, "extra_images.csv"), "w") as f:
        f.write("image_id,turtle_id\n")
    base = layouts.read_turtle(turtle_copy)
    assert len(base.train) > 0
    train = os.path.join(turtle_copy, "train.csv")
    lines = open(train).read().splitlines()
    first = lines[1].split(",")
    first[2] = "new_turtle"
    open(train, "w").write("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    with pytest.raises(DataError, match="the label 'new_turtle', the name of the new label") as e:
        layouts.read_turtle(turtle_copy)
    assert any("train.csv line 2" in p for p in e.value.problems)


def test_byte_identical_images_split_across_folds_are_counted_in_a_warning(turtle_copy, tmp_path, capsys):
    """Issue 21 item 5: byte-identical images under different ids were split across folds with no word."""
    import os
    import shutil

    from foldnet.tasks.classification.convert import create_tfrecords

    images = os.path.join(turtle_copy, "images")
    names = sorted(os.listdir(images))
    for name in names[1:9]:  # 9 copies of one image under 9 ids (labels differ: they cannot all share a fold)
        shutil.copy(os.path.join(images, names[0]), os.path.join(images, name))
    create_tfrecords(data_dir=turtle_copy, out_dir=str(tmp_path / "tfrec"), n_folds=3, workers=1, progress=False)
    err = capsys.readouterr().err
    assert "warning: 9 training images are byte-identical" in err and "--group_duplicates" in err
