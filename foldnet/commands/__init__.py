"""Layer 5, the command-line entry points: create_tfrecords dispatch, demo data, and the foldnet
console script (evaluate, baseline, ...)."""
