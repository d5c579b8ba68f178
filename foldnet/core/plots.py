"""Pictures of results: learning curves, known vs new trade-off of the open-set rule."""

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


def plot_tradeoff(curve, path, title="", chosen=None, floor=None):
    """Write a PNG of a known vs new trade-off: MAP@5 of known and of new rows (and all) against the
    threshold (``curve``: rows {threshold, known, new, all}); ``chosen``: the fitted threshold (vertical
    line); ``floor``: the lowest known MAP@5 allowed (horizontal line)."""
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = [c["threshold"] for c in curve]
    for key in ("known", "new", "all"):
        axes[0].plot(x, [float("nan") if c[key] is None else c[key] for c in curve], marker="o", ms=3, label=key)
    axes[0].set_xlabel("threshold (new label first below it)")
    axes[0].set_ylabel("MAP@5")
    if chosen is not None:
        axes[0].axvline(chosen, color="grey", ls="--", lw=1, label=f"fitted {chosen:.4f}")
    if floor is not None:
        axes[0].axhline(floor, color="red", ls=":", lw=1, label=f"known floor {floor:.4f}")
    axes[0].legend(fontsize=8)
    axes[1].plot([c["new"] for c in curve], [c["known"] for c in curve], marker="o", ms=3)
    axes[1].set_xlabel("MAP@5 new")
    axes[1].set_ylabel("MAP@5 known")
    axes[1].set_title("known vs new as the threshold moves")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
