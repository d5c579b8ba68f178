"""io.tfdata.plain: a map function traced as written, without AutoGraph's rewrite."""
import pytest
import tensorflow as tf

import foldnet  # noqa: F401  (before tensorflow)
from foldnet.io import tfdata


def branchy(x):
    if x > 1:  # a Python branch on a tensor: AutoGraph rewrites it into tf.cond
        return x * 10
    return x


def test_plain_traces_without_autograph_and_a_tensor_branch_fails_loudly():
    ds = tf.data.Dataset.range(4)
    assert list(ds.map(branchy).as_numpy_iterator()) == [0, 1, 20, 30]  # converted
    with pytest.raises(TypeError, match="as a Python `bool`"):
        ds.map(tfdata.plain(branchy))  # not converted: refused when the pipeline is built
    assert list(ds.map(tfdata.plain(lambda x: x * 2 + 1)).as_numpy_iterator()) == [1, 3, 5, 7]
