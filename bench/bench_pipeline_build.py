"""Time to BUILD a training pipeline in a new process (not its throughput): the Kelp recipe's
segmentation pipeline (parse, 7 bands + 17 indices, quantile scaling, masking, map_aug with a
rotation, padding) with foldnet's maps traced as written (``tfdata.plain``, ``autograph=False`` on
its compiled functions) against the same code with AutoGraph's source conversion forced back on.

Both build the same graph (a Python branch on a tensor would fail the plain build, not change it),
so what differs is only the AST rewrite of every function the maps call; it is paid once per new
process and per new function, i.e. by every ``run.py`` start, every fold worker and every test.

Floor: a bare pipeline over the same records (read + ``parse_example``, traced plain), what any
pipeline of these records costs to build. Each measurement is a fresh subprocess; the two modes
alternate, medians of ROUNDS. Results: bench/out/pipeline_build.md.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

RECIPE = os.path.join(common.ROOT, "models", "kelp_b5.yaml")


def child(mode, data):
    import tensorflow as tf

    if mode == "autograph":  # every tf.function and map converted by AutoGraph, as before
        original = tf.function

        def converting(*args, **kwargs):
            kwargs.pop("autograph", None)
            return original(*args, **kwargs)

        tf.function = converting
        from foldnet.io import tfdata

        tfdata.plain = lambda fn: fn
    from foldnet.engine import config
    from foldnet.io import records, tfdata
    from foldnet.tasks.segmentation import records as seg_records
    from foldnet.tasks.segmentation import task as seg_task

    run_dir = tempfile.mkdtemp()
    cfg = config.parse_config(["--config", RECIPE, "--weights", "none", "--data_dir", data, "--run_dir", run_dir,
                               "--batch_size", "2"])
    task = seg_task.SegmentationTask()
    manifest = records.load_manifest(os.path.join(data, "tfrec"))
    spec = task.load_spec(manifest)
    files = records.fold_files(manifest, [1])
    task.prepare_run(manifest, cfg)
    features = task.features(manifest, cfg)
    out = {}
    start = time.perf_counter()
    bare = tfdata.read_records(files, deterministic=True).map(
        tfdata.plain(lambda s: seg_records.parse_example(s, features.shape, features.dtype)))
    out["floor_s"] = time.perf_counter() - start
    next(iter(bare))
    start = time.perf_counter()
    ds = task.train_dataset(files, spec, cfg, seed=0, cache="none", drop_remainder=True, n_workers=1)
    out["build_s"] = time.perf_counter() - start
    start = time.perf_counter()
    next(iter(ds))
    out["first_batch_s"] = time.perf_counter() - start
    print(json.dumps(out))


def measure(mode, data):
    res = subprocess.run([sys.executable, __file__, "--child", mode, "--data", data], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child")
    parser.add_argument("--data")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.data)
    from foldnet.commands import convert
    from foldnet.tasks.segmentation import demo_data

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "kelp")
        demo_data.build_kelp_dataset(data, n_places=8, acquisitions=2, size=args.size, seed=3)
        assert convert.main(["--data_dir", data, "--n_folds", "2", "--no_progress"]) == 0
        runs = {"plain": [], "autograph": []}
        for _ in range(args.rounds):
            for mode in runs:
                runs[mode].append(measure(mode, data))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    rows = [f"| {m} | {v['build_s']:.2f} | {v['first_batch_s']:.2f} | {v['floor_s']:.3f} |" for m, v in med.items()]
    text = "\n".join([
        "# Building the Kelp recipe's training pipeline in a new process",
        "",
        common.machine(),
        "",
        f"{args.rounds} rounds, each a fresh process per mode, alternating; medians in seconds. Floor: a bare "
        "read + parse pipeline over the same records.",
        "",
        "| maps traced | build | first batch | floor (bare parse build) |",
        "|---|---|---|---|",
        *rows,
        "",
        f"AutoGraph conversion / plain: build x{med['autograph']['build_s'] / med['plain']['build_s']:.1f}, "
        f"first batch x{med['autograph']['first_batch_s'] / med['plain']['first_batch_s']:.2f}; plain build is "
        f"{med['plain']['build_s'] / max(med['plain']['floor_s'], 1e-9):.0f} x the floor "
        "(the recipe's ops themselves: 17 indices, scaling, rotation).",
    ])
    common.write_out(text, "pipeline_build")


if __name__ == "__main__":
    main()
