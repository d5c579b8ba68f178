"""Pictures of results: learning curves."""

from foldnet.core import fileio


def plot_history(history, path, title="", monitor="val_loss"):
    """Write a PNG of loss and metric curves from per-epoch history rows (dicts with 'epoch')."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    keys = sorted({k for r in history for k in r} - {"epoch", "seconds"})
    loss_keys = [k for k in keys if k.endswith("loss")]
    metric_keys = [k for k in keys if k not in loss_keys and k != "lr"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, group, name in ((axes[0], loss_keys, "loss"), (axes[1], metric_keys, "metrics"), (axes[2], ["lr"], "learning rate")):
        for k in group:
            ax.plot(epochs, [r.get(k, float("nan")) for r in history], marker="o", ms=3, label=k)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        if group:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if "lr" in keys:
        axes[2].set_yscale("log")
    best = [r for r in history if monitor in r]
    if best:
        pick = min if "loss" in monitor else max
        b = pick(best, key=lambda r: r[monitor])
        ax = axes[0] if monitor in loss_keys else axes[1]
        ax.axvline(b["epoch"], color="grey", ls="--", lw=1)
        ax.annotate(f"best {monitor} {b[monitor]:.4f}", (b["epoch"], b[monitor]), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path
