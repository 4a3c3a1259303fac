"""Charts of a :class:`~edgelstm.runtime.bench.BenchReport` (matplotlib, extra ``plot``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from edgelstm.errors import UnsupportedError

PLOT_SUFFIXES = (".png", ".svg")


def check_plot_path(path: str | os.PathLike) -> None:
    """Refuse a ``--plot`` path matplotlib cannot write, or a missing matplotlib."""
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise UnsupportedError(f"--plot must end in {' or '.join(PLOT_SUFFIXES)}, got {path}")
    if importlib.util.find_spec("matplotlib") is None:
        raise UnsupportedError("--plot needs matplotlib: pip install 'edgelstm[plot]'")


def write_plot(report, path: str | os.PathLike, fmt: str | None = None) -> None:
    """Draw ``report`` to ``path`` (``.png`` or ``.svg``; ``fmt`` overrides the suffix).

    One panel per batch-mode shape (p50 per backend as bars, p10-p90 as
    error bars, log-scale ms) and, for stream mode, one panel of each
    backend's chunk-latency distribution per chunk size (box plots, log
    scale). Titled with the model's name.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    batch = [r for r in report.results if r.mode == "batch"]
    stream = [r for r in report.results if r.mode == "stream"]
    shapes = list(dict.fromkeys((r.batch, r.seq_len) for r in batch))
    chunks = list(dict.fromkeys(r.chunk for r in stream))
    panels = [("batch", s) for s in shapes] + [("stream", c) for c in chunks]
    if not panels:
        raise UnsupportedError("nothing was measured, so there is nothing to plot")
    backends = list(dict.fromkeys(r.backend for r in report.results))
    colours = {b: plt.cm.tab10(k % 10) for k, b in enumerate(backends)}
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 1.1 * len(backends)) *
                                                      len(panels), 4.6), squeeze=False)
    for ax, (mode, key) in zip(axes[0], panels, strict=True):
        rows = ([r for r in batch if (r.batch, r.seq_len) == key] if mode == "batch"
                else [r for r in stream if r.chunk == key])
        names = [r.backend for r in rows]
        pos = np.arange(len(rows))
        if mode == "batch":
            p50 = np.array([r.p50_ms for r in rows])
            # p50_ms is rounded to 4 decimals: a p10 or p90 within that of it would
            # give a negative whisker, which matplotlib refuses
            lo = np.maximum(p50 - np.array([np.percentile(r.times_ms, 10) for r in rows]), 0.0)
            hi = np.maximum(np.array([np.percentile(r.times_ms, 90) for r in rows]) - p50, 0.0)
            ax.bar(pos, p50, color=[colours[n] for n in names], yerr=[lo, hi], capsize=3)
            for x, v in zip(pos, p50, strict=True):
                ax.annotate(f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize=8,
                            xytext=(0, 3), textcoords="offset points")
            ax.set_title(f"batch B={key[0]} T={key[1]}: ms per call (p50, p10-p90)")
        else:
            box = ax.boxplot([r.times_ms for r in rows], positions=pos, widths=0.6,
                             whis=(1, 99), showfliers=False, patch_artist=True)
            for patch, n in zip(box["boxes"], names, strict=True):
                patch.set_facecolor(colours[n])
            ax.set_title(f"stream, {key}-frame chunks: ms per chunk (box p25-p75, "
                         "whiskers p1-p99)", fontsize=9)
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_xticks(pos, names, rotation=30, ha="right")
        ax.set_xlabel("backend")
        ax.grid(axis="y", which="both", alpha=0.3)
    src = Path(report.model)
    name = f"{src.parent.name}/{src.name}" if src.name == "model" and src.parent.name else src.name
    fig.suptitle(f"edgelstm bench: {name} — lower is better")
    fig.tight_layout()
    fig.savefig(path, format=fmt or Path(path).suffix.lstrip(".").lower(), dpi=110)
    plt.close(fig)
