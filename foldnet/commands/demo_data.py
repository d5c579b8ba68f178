"""``foldnet demo-data`` (``python -m foldnet.commands.demo_data``): build a bundled demo dataset of any
task in its real layout."""
import argparse
import sys

from foldnet.commands.convert import load
from foldnet.tasks import base as tasks

# every task's demo kinds: kind -> ("module:function(out_dir, args)", default out_dir)
KINDS = {kind: entry for name in tasks.TASKS for kind, entry in tasks.settings_module(name).DEMO_KINDS.items()}
# Largest demo: a side of 2048 px (the real tiles are 350 px) and 100000 items of any count; beyond
# that a demo only runs out of memory (an --image_size of 100000 was killed at 21 GB).
MAX_IMAGE_SIZE = 2048
MAX_COUNT = 100_000


def main(argv=None):
    p = argparse.ArgumentParser(description="Build a bundled demo dataset (Turtle Recall layout).")
    p.add_argument("--kind", choices=list(KINDS), default="digits",
                   help="digits: the make-demo dataset; photos: ~100 px photos of a few dozen individuals, "
                        "a stand-in for your own small re-identification dataset; kelp: synthetic Kelp Wanted "
                        "tiles in the real layout (foldnet.tasks.segmentation.demo_data); cloud: synthetic On Cloud N chips in the real "
                        "layout (--n_places locations x --acquisitions chips); biomass: synthetic BioMassters chips "
                        "in the real layout (foldnet.tasks.temporal.demo_data) (default: %(default)s)")
    p.add_argument("--out_dir", default=None,
                   help="where to write it (a folder this tool built before is replaced; any other existing folder is "
                        "refused) (default: data/demo for digits, data/photos for photos)")
    p.add_argument("--image_size", type=int, default=None,
                   help="side of the images in pixels (default: 32 for digits, 100 for photos, 64 for kelp; "
                        "350 is the real Kelp tile size)")
    p.add_argument("--n_individuals", type=int, default=36, help="photos: number of individuals (default: %(default)s)")
    p.add_argument("--per_individual", type=int, default=12,
                   help="photos: photos per individual (default: %(default)s)")
    p.add_argument("--n_test_only", type=int, default=None,
                   help="photos: individuals present only in the test set, half as many photos each "
                        "(default: n_individuals // 6)")
    p.add_argument("--n_places", type=int, default=40, help="kelp: number of places (default: %(default)s)")
    p.add_argument("--acquisitions", type=int, default=4,
                   help="kelp: tiles per place, near-duplicates of each other (default: %(default)s)")
    p.add_argument("--n_train", type=int, default=240, help="biomass: training chips (default: %(default)s)")
    p.add_argument("--n_test", type=int, default=40, help="biomass: test chips (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    a = p.parse_args(argv)
    for name in ("image_size", "n_individuals", "per_individual", "n_places", "acquisitions", "n_train", "n_test"):
        value, high = getattr(a, name), MAX_IMAGE_SIZE if name == "image_size" else MAX_COUNT
        if value is not None and not 1 <= value <= high:
            p.error(f"--{name} must be in [1, {high}], got {value}")
    if a.n_test_only is not None and not 0 <= a.n_test_only <= MAX_COUNT:
        p.error(f"--n_test_only must be in [0, {MAX_COUNT}], got {a.n_test_only}")
    from foldnet.core.cli import run_main

    builder, default_out = KINDS[a.kind]
    out_dir = a.out_dir or default_out
    rc = run_main(load(builder), out_dir, a)
    if rc:
        return rc
    print(f"{a.kind} dataset written to {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
