"""``foldnet demo-data`` (``python -m foldnet.commands.demo_data``): build a bundled demo dataset of any
task in its real layout."""
import argparse
import sys

from foldnet.commands.convert import load
from foldnet.tasks import base as tasks

# every task's demo kinds: kind -> ("module:function(out_dir, args)", default out_dir)
KINDS = {kind: entry for name in tasks.TASKS for kind, entry in tasks.settings_module(name).DEMO_KINDS.items()}


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
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
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
