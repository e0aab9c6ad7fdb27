"""The report's plots, drawn with matplotlib's Figure directly: no pyplot, no global backend switch; Agg canvas.

Each plot function takes a table (or the records) and a PNG path, writes the PNG and returns a note ("" or
e.g. "first 24 of 30 panels"), or returns None and writes nothing when there is no data to draw.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .frame import _i, _missing, _obj, _seq_rank, prepare
from .tables import PIVOT_GROUP, PIVOT_INDEX, group_title


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _grid(fig, n: int, ncols: int):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


IMPL_COLORS = {"cudnn": "tab:blue", "naive": "tab:orange", "lstmcell": "tab:green"}
MAX_PANELS = 24


def plot_throughput(table: pd.DataFrame, path: Path) -> str | None:
    """img/s vs hidden size, a line per impl (and per num_layers: solid, dashed, ...), log y; a panel per
    PIVOT_GROUP. Returns a note (e.g. panels left out) or None; writes nothing without data."""
    impls = [c for c in table.columns if c not in PIVOT_INDEX]
    if table.empty or not impls:
        return None
    from matplotlib.ticker import NullLocator
    groups = list(table.groupby(PIVOT_GROUP, dropna=False, sort=False))
    shown = groups[:MAX_PANELS]
    fig = _figure(4.2 * min(3, len(shown)), 3.2 * math.ceil(len(shown) / 3))
    styles = ["-", "--", ":", "-."]
    for ax, (key, g) in zip(_grid(fig, len(shown), 3), shown):
        layers = sorted(g["num_layers"].dropna().unique())
        for impl in impls:
            for j, n in enumerate(layers):
                s = g[g["num_layers"] == n][["hidden_size", impl]].dropna().sort_values("hidden_size")
                if s.empty:
                    continue
                ax.plot(s["hidden_size"].astype(float), s[impl], styles[j % 4], marker="o", ms=3,
                        color=IMPL_COLORS.get(impl), label=f"{impl} L{int(n)}")
        ax.set_xscale("log", base=2)
        hs = sorted(int(h) for h in g["hidden_size"].dropna().unique())
        ax.set_xticks(hs, [str(h) for h in hs])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel("hidden size")
        ax.set_ylabel("img/s")
        ax.set_title(group_title(dict(zip(PIVOT_GROUP, key))), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.savefig(path)
    return f"first {MAX_PANELS} of {len(groups)} panels" if len(groups) > MAX_PANELS else ""


def plot_speedup_heatmap(table: pd.DataFrame, path: Path, other: str = "naive") -> str | None:
    """cudnn/<other> as a heatmap over seq (rows) x hidden size (columns); a panel per mode, device, dtype,
    num_layers (geometric mean over any remaining keys, e.g. batch sizes). Blue: cudnn faster."""
    col = f"cudnn/{other}"
    if table.empty or col not in table.columns or table[col].notna().sum() == 0:
        return None
    from matplotlib.colors import TwoSlopeNorm
    d = table[table[col].notna() & (table[col] > 0)].copy()
    d["log2"] = np.log2(d[col].astype(float))
    panels = list(d.groupby(["mode", "device", "dtype", "num_layers"], dropna=False, sort=False))[:MAX_PANELS]
    lim = max(1.0, float(d["log2"].abs().max()))
    norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    fig = _figure(4.5 * min(2, len(panels)), 3.4 * math.ceil(len(panels) / 2))
    im = None
    for ax, (key, g) in zip(_grid(fig, len(panels), 2), panels):
        m = g.groupby(["seq", "hidden_size"])["log2"].mean().unstack("hidden_size")
        m = m.loc[sorted(m.index, key=_seq_rank), sorted(m.columns)]
        im = ax.imshow(m.to_numpy(dtype=float), cmap="RdBu", norm=norm, aspect="auto")
        ax.set_xticks(range(len(m.columns)), [str(int(h)) for h in m.columns])
        ax.set_yticks(range(len(m.index)), list(m.index))
        ax.set_xlabel("hidden size")
        for (i, j), v in np.ndenumerate(m.to_numpy(dtype=float)):
            if not math.isnan(v):
                ax.text(j, i, f"{2 ** v:.1f}x", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * lim else "black")
        mode, device, dtype, layers = key
        ax.set_title(f"{col} · {mode} · {device} · {dtype} · L{_i(layers)}", fontsize=8)
    if im is not None:
        cb = fig.colorbar(im, ax=fig.axes, shrink=0.8)
        cb.set_label(f"log2({col})")
    fig.savefig(path)
    return ""


def plot_accuracy_curves(df: pd.DataFrame, path: Path) -> str | None:
    """test_acc against epoch and against elapsed seconds, a line per ok accuracy trial."""
    d = prepare(df)
    acc = d[(d["mode"] == "accuracy") & (d["status"] == "ok")]
    curves = []
    multi = d["run_id"].nunique() > 1
    for _, r in acc.iterrows():
        curve = _obj(r["curve"]) if "curve" in r and not _missing(r["curve"]) else None
        pts = [p for p in (curve or []) if isinstance(p, dict) and not _missing(p.get("test_acc"))]
        if pts:
            curves.append((r["variant"] + (f" [{r['run_id']}]" if multi else ""), pts))
    if not curves:
        return None
    fig = _figure(11, 4)
    ax1, ax2 = fig.subplots(1, 2)
    for label, pts in curves:
        ax1.plot([p.get("epoch") for p in pts], [p["test_acc"] for p in pts], marker="o", ms=3, label=label)
        if all(not _missing(p.get("elapsed_s")) for p in pts):
            ax2.plot([p["elapsed_s"] for p in pts], [p["test_acc"] for p in pts], marker="o", ms=3, label=label)
    ax1.set_xlabel("epoch")
    ax2.set_xlabel("elapsed s")
    ax2.set_xscale("log")
    for ax in (ax1, ax2):
        ax.set_ylabel("test accuracy")
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=6)
    ax1.set_title("test accuracy per epoch", fontsize=9)
    ax2.set_title("time to accuracy", fontsize=9)
    fig.savefig(path)
    return ""


def plot_kernel_breakdown(table: pd.DataFrame, path: Path) -> str | None:
    """Stacked bars of kernel time share by category, a bar per row of kernel_table."""
    shares = [c for c in table.columns if c.startswith("share_")]
    if table.empty or not shares:
        return None
    t = table[table[shares].sum(axis=1) > 0]
    if t.empty:
        return None
    labels = [f"{r['impl']}\n{r['seq']}/h{_i(r['hidden_size'])}x{_i(r['num_layers'])}" for _, r in t.iterrows()]
    fig = _figure(max(5.0, 0.9 * len(t) + 2.5), 4)
    ax = fig.subplots()
    bottom = np.zeros(len(t))
    cmap = {"gemm": "tab:blue", "cudnn-rnn": "tab:purple", "elementwise": "tab:orange", "reduction": "tab:green",
            "memcpy": "tab:red", "other": "tab:gray"}
    for c in shares:
        vals = t[c].to_numpy(dtype=float)
        ax.bar(range(len(t)), vals, bottom=bottom, label=c[len("share_"):], color=cmap.get(c[len("share_"):]))
        bottom += vals
    ax.set_xticks(range(len(t)), labels, fontsize=7)
    ax.set_ylabel("share of kernel time")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("kernel time by category", fontsize=9)
    fig.savefig(path)
    return ""

