"""`kvstore bench compare --plot FILE.png`: the comparison at a glance.

One row per workload: throughput per target on the left, latency p50 and p99 per
target on the right (medians over rounds; the whiskers span min .. max). Needs
matplotlib (`pip install 'kvstore[plot]'`); drawn off-screen (Agg).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

# A colour per target, stable across pictures: etcd in blues, kvstore in oranges.
TARGET_COLOURS = {"etcd-1": "#4c72b0", "etcd-3": "#8fb0de", "kvstore": "#dd8452", "kvstore-3": "#f2b880"}
OTHER_COLOURS = ("#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
ROW_HEIGHT_IN = 2.6
WIDTH_IN = 11.0
DPI = 110


class RunLike(Protocol):
    # Read-only: a run whose latencies are ints is one too.
    @property
    def target(self) -> str: ...
    @property
    def workload(self) -> str: ...
    @property
    def throughput(self) -> float: ...
    @property
    def p50_us(self) -> float: ...
    @property
    def p99_us(self) -> float: ...


def _stats(values: Sequence[float]) -> tuple[float, float, float]:
    """median, and the distances down to the min and up to the max (for error bars)."""
    med = statistics.median(values)
    return med, med - min(values), max(values) - med


def colour(target: str, index: int) -> str:
    return TARGET_COLOURS.get(target, OTHER_COLOURS[index % len(OTHER_COLOURS)])


def plot_comparison(runs: Sequence[RunLike], targets: Sequence[str], workloads: Sequence[str], path: Path,
                    title: str = "kvstore vs etcd") -> Path:  # fmt: skip
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'kvstore[plot]'") from e
    shown = [w for w in workloads if any(r.workload == w for r in runs)]
    if not shown:
        raise RuntimeError("nothing to plot: no run finished")
    fig, axes = plt.subplots(len(shown), 2, figsize=(WIDTH_IN, ROW_HEIGHT_IN * len(shown) + 0.8), squeeze=False)
    for row, w in enumerate(shown):
        ax_tp, ax_lat = axes[row]
        names = [t for t in targets if any(r.workload == w and r.target == t for r in runs)]
        for i, t in enumerate(names):
            mine = [r for r in runs if r.workload == w and r.target == t]
            med, lo, hi = _stats([r.throughput for r in mine])
            ax_tp.barh(i, med, xerr=[[lo], [hi]], color=colour(t, i), capsize=3)
            ax_tp.text(med + hi, i, f" {med:,.0f}", va="center", fontsize=8)  # past the whisker
            for j, (attr, hatch) in enumerate((("p50_us", ""), ("p99_us", "//"))):
                m, lo_l, hi_l = _stats([getattr(r, attr) / 1000 for r in mine])
                y = i + (j - 0.5) * 0.38
                ax_lat.barh(y, m, height=0.36, xerr=[[lo_l], [hi_l]], color=colour(t, i), hatch=hatch,
                            edgecolor="#333333", linewidth=0.4, capsize=2)  # fmt: skip
                ax_lat.text(m + hi_l, y, f" {m:.2f}", va="center", fontsize=7)
        for ax in (ax_tp, ax_lat):
            ax.set_yticks(range(len(names)), names)
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
            ax.margins(x=0.22)
        ax_tp.set_ylabel(w, fontsize=11, fontweight="bold")
        label = "events/s" if w.startswith("watch") else "ops/s"
        ax_tp.set_title(f"{w}: throughput ({label}, higher is better)", fontsize=9, loc="left")
        ax_lat.set_title(f"{w}: latency ms, p50 plain / p99 hatched (lower is better)", fontsize=9, loc="left")
    fig.suptitle(f"{title} (medians over rounds; whiskers: min .. max)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
