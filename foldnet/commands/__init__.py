"""foldnet.commands: the command-line entry points (create_tfrecords, demo data, evaluate, baseline, the foldnet console script)."""
