"""Small TensorFlow reductions shared by the losses and metrics of the map tasks: exact over
the global batch when a strategy runs several replicas."""
import tensorflow as tf


def global_sum(values):
    """All-reduce (sum) a list of tensors over the replicas when called in a replica context
    of a strategy with several replicas; unchanged otherwise."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)


def safe_div(num, den):
    return num / tf.maximum(den, 1.0)
