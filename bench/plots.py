"""Pictures of line use, drawn from the simulator's call records (each call's `created_at` and
`ended_at`): a line is in use from the create-call request to the call's end.

matplotlib (a dev dependency) is imported only when a plot is asked for, with the Agg backend (no
display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

Interval = tuple[float, float]


def intervals_of(calls: Sequence[dict[str, Any]]) -> list[Interval]:
    """(created_at, ended_at) of every call that ended, in create order."""
    return sorted((c["created_at"], c["ended_at"]) for c in calls if c["ended_at"] is not None)


def in_use_steps(intervals: Sequence[Interval]) -> tuple[list[float], list[int]]:
    """The number of lines in use as a step function: at times[i] it becomes counts[i]."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    times: list[float] = []
    counts: list[int] = []
    current = 0
    for at, step in edges:
        current += step
        if times and times[-1] == at:
            counts[-1] = current
        else:
            times.append(at)
            counts.append(current)
    return times, counts


def mean_in_use(intervals: Sequence[Interval], edges: Sequence[float]) -> list[float]:
    """Mean lines in use in each bin [edges[i], edges[i+1]): busy line-seconds in the bin / its width."""
    import numpy as np

    bounds = np.asarray(edges, dtype=float)
    if not intervals:
        return [0.0] * (len(bounds) - 1)
    spans = np.asarray(intervals, dtype=float)
    starts, ends = spans[:, 0], spans[:, 1]
    # Busy line-seconds from the first edge up to each edge: sum over calls of the part before it.
    before = np.clip(bounds[:, None] - starts[None, :], 0.0, (ends - starts)[None, :]).sum(axis=1)
    return [float(v) for v in np.diff(before) / np.diff(bounds)]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_business(intervals: Sequence[Interval], cap: int, path: str | Path, title: str) -> None:
    """Lines in use over time for one business, against its cap."""
    plt = _pyplot()
    times, counts = in_use_steps(intervals)
    t0 = times[0] if times else 0.0
    figure, axes = plt.subplots(figsize=(12, 3.5), constrained_layout=True)
    axes.step([t - t0 for t in times], counts, where="post", linewidth=0.8, color="tab:blue", label="in use")
    axes.axhline(cap, color="tab:red", linestyle="--", linewidth=0.8, label=f"cap {cap}")
    axes.set_ylim(-0.1, cap + 0.6)
    axes.set_yticks(range(cap + 1))
    axes.set_xlabel("seconds since the first create")
    axes.set_ylabel("lines in use")
    axes.set_title(title)
    axes.legend(loc="lower center")
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_fleet(
    by_business: dict[str, Sequence[Interval]],
    cap: int,
    path: str | Path,
    title: str,
    window: Interval | None = None,
    max_bins: int = 600,
) -> None:
    """Two panels: lines in use across all businesses over time (against businesses x cap, with the
    measured window shaded), and a strip per business (rows ordered by first create) coloured by the
    mean lines it had in use in each time bin."""
    plt = _pyplot()
    rows = sorted((iv for iv in by_business.values() if iv), key=lambda iv: iv[0][0])
    every = [span for iv in rows for span in iv]
    if not every:
        raise ValueError("no ended calls to plot")
    t0 = min(start for start, _ in every)
    t1 = max(end for _, end in every)
    step = max((t1 - t0) / max_bins, 0.05)
    bins = int((t1 - t0) / step) + 1
    edges = [t0 + i * step for i in range(bins + 1)]
    strips = [mean_in_use(iv, edges) for iv in rows]

    figure, (total, heat) = plt.subplots(
        2,
        1,
        figsize=(13, 8),
        sharex=True,
        gridspec_kw={"height_ratios": [1, 2.2]},
        constrained_layout=True,
    )
    times, counts = in_use_steps(every)
    total.step([t - t0 for t in times], counts, where="post", linewidth=0.7, color="tab:blue", label="in use")
    total.axhline(
        len(by_business) * cap, color="tab:red", linestyle="--", linewidth=0.8, label="businesses x cap"
    )
    if window is not None:
        total.axvspan(window[0] - t0, window[1] - t0, color="tab:green", alpha=0.12, label="measured window")
    total.set_ylabel("lines in use (all)")
    total.set_title(title)
    total.legend(loc="lower center", ncol=3)

    image = heat.imshow(
        strips,
        aspect="auto",
        interpolation="nearest",
        origin="lower",
        extent=(0.0, bins * step, 0, len(rows)),
        vmin=0,
        vmax=cap,
        cmap="viridis",
    )
    heat.set_xlabel("seconds since the first create")
    heat.set_ylabel("business (by first create)")
    figure.colorbar(image, ax=heat, label=f"mean lines in use per {step:.2f} s bin")
    figure.savefig(path, dpi=120)
    plt.close(figure)
