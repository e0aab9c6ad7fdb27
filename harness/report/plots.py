"""The report's plots, drawn with matplotlib's Figure directly: no pyplot, no global backend switch; Agg canvas.

Each plot function takes a table (or the records) and a PNG path, writes the PNG and returns a note ("" or
e.g. "first 24 of 30 panels"), or returns None and writes nothing when there is no data to draw.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from .frame import _i, _impl_columns, _missing, _obj, _seq_rank, prepare
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


NOISY_NOTE = "hollow, on dotted bars"


def throughput_figure(cells: pd.DataFrame):
    """The throughput plot as a Figure (see plot_throughput), with `drawn` and `noisy` set on it: how many
    cells got a marker, and how many of those hollow. None without data."""
    if cells.empty or "impl" not in cells.columns:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
    impls = _impl_columns(cells["impl"].unique())
    groups = list(cells.groupby(PIVOT_GROUP, dropna=False, sort=False))
    shown = groups[:MAX_PANELS]
    ncols = min(4, len(shown))                  # four across: a 2x2 suite fits one screen's width
    fig = _figure(3.5 * ncols, 2.9 * math.ceil(len(shown) / ncols))
    fig.drawn = fig.noisy = 0
    styles = ["-", "--", ":", "-."]
    for ax, (key, g) in zip(_grid(fig, len(shown), ncols), shown):
        layers = sorted(g["num_layers"].dropna().unique())
        for impl in impls:
            color = IMPL_COLORS.get(impl)
            for j, n in enumerate(layers):
                s = g[(g["num_layers"] == n) & (g["impl"] == impl)].sort_values("hidden_size")
                if s.empty:
                    continue
                x, y = s["hidden_size"].astype(float).to_numpy(), s["img_per_s"].astype(float).to_numpy()
                half = np.nan_to_num(s["img_per_s_iqr"].astype(float).to_numpy() / 2)
                noisy = s["noisy"].astype(bool).to_numpy()
                ax.plot(x, y, styles[j % 4], color=color, lw=1, label=f"{impl} L{int(n)}")
                for mask, face, ls in ((~noisy, color, "-"), (noisy, "white", ":")):
                    if mask.any():
                        low = np.minimum(half[mask], 0.9 * y[mask])      # a log axis has no room below 0
                        bars = ax.errorbar(x[mask], y[mask], yerr=[low, half[mask]], fmt="o", ms=5, color=color,
                                           mfc=face, mec=color, capsize=2, lw=1, gid="noisy" if ls == ":" else
                                           "clean")
                        bars[2][0].set_linestyle(ls)
                fig.drawn += len(s)
                fig.noisy += int(noisy.sum())
        ax.set_xscale("log", base=2)
        hs = sorted(int(h) for h in g["hidden_size"].dropna().unique())
        ax.set_xticks(hs, [str(h) for h in hs])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xlabel("hidden size", fontsize=8)
        ax.set_ylabel("img/s", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(textwrap.fill(group_title(dict(zip(PIVOT_GROUP, key))), 48), fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if cells["noisy"].astype(bool).any():
            handles.append(Line2D([], [], ls="none", marker="o", ms=5, mfc="white", mec="gray", label="noisy"))
        ax.legend(handles=handles, fontsize=6)
    return fig


def plot_throughput(cells: pd.DataFrame, path: Path) -> str | None:
    """img/s vs hidden size, a line per impl (and per num_layers: solid, dashed, ...), log y; a panel per
    PIVOT_GROUP. Every cell of tables.throughput_cells is drawn: a bar of median +- IQR/2 of its per-block
    img/s, and a noisy cell hollow (its bar dotted), so a reader sees the number and how far to trust it
    instead of a hole. Returns a note (cells drawn, panels left out) or None; writes nothing without data."""
    fig = throughput_figure(cells)
    if fig is None:
        return None
    fig.savefig(path)
    groups = cells.groupby(PIVOT_GROUP, dropna=False, sort=False).ngroups
    notes = [f"{fig.drawn} cells drawn" + (f", {fig.noisy} noisy ({NOISY_NOTE})" if fig.noisy else "")]
    if groups > MAX_PANELS:
        notes.append(f"first {MAX_PANELS} of {groups} panels")
    return "; ".join(notes)


def plot_speedup_heatmap(cells: pd.DataFrame, path: Path, other: str = "naive") -> str | None:
    """cudnn/<other> as a heatmap over seq (rows) x hidden size (columns) from tables.throughput_cells; a panel
    per mode, device, dtype, num_layers (geometric mean over any remaining keys, e.g. batch sizes). Blue: cudnn
    faster. A ratio with a noisy cell on either side is drawn too, hatched and marked "~"."""
    if cells.empty or not {"cudnn", other} <= set(cells["impl"]):
        return None
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle
    col = f"cudnn/{other}"
    side = {i: cells[cells["impl"] == i].set_index(PIVOT_INDEX) for i in ("cudnn", other)}
    both = side["cudnn"].index.intersection(side[other].index)
    a, b = side["cudnn"].loc[both], side[other].loc[both]
    d = pd.DataFrame({"ratio": a["img_per_s"].astype(float) / b["img_per_s"].astype(float),
                      "noisy": a["noisy"].astype(bool) | b["noisy"].astype(bool)}, index=both).reset_index()
    d = d[d["ratio"].notna() & (d["ratio"] > 0)]
    if d.empty:
        return None
    d["log2"] = np.log2(d["ratio"].astype(float))
    panels = list(d.groupby(["mode", "device", "dtype", "num_layers"], dropna=False, sort=False))[:MAX_PANELS]
    lim = max(1.0, float(d["log2"].abs().max()))
    norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    fig = _figure(4.5 * min(2, len(panels)), 3.4 * math.ceil(len(panels) / 2))
    im = None
    for ax, (key, g) in zip(_grid(fig, len(panels), 2), panels):
        m = g.groupby(["seq", "hidden_size"])["log2"].mean().unstack("hidden_size")
        m = m.loc[sorted(m.index, key=_seq_rank), sorted(m.columns)]
        rough = g.groupby(["seq", "hidden_size"])["noisy"].any().unstack("hidden_size").reindex_like(m)
        im = ax.imshow(m.to_numpy(dtype=float), cmap="RdBu", norm=norm, aspect="auto")
        ax.set_xticks(range(len(m.columns)), [str(int(h)) for h in m.columns])
        ax.set_yticks(range(len(m.index)), list(m.index))
        ax.set_xlabel("hidden size")
        for (i, j), v in np.ndenumerate(m.to_numpy(dtype=float)):
            if math.isnan(v):
                continue
            noisy = bool(rough.iloc[i, j]) if not _missing(rough.iloc[i, j]) else False
            if noisy:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", lw=0, alpha=0.35))
            ax.text(j, i, f"{'~' if noisy else ''}{2 ** v:.1f}x", ha="center", va="center", fontsize=7,
                    color="white" if abs(v) > 0.6 * lim else "black")
        mode, device, dtype, layers = key
        ax.set_title(f"{col} · {mode} · {device} · {dtype} · L{_i(layers)}", fontsize=8)
    if im is not None:
        cb = fig.colorbar(im, ax=fig.axes, shrink=0.8)
        cb.set_label(f"log2({col})")
    fig.savefig(path)
    return "hatched, ~: a noisy cell on either side" if d["noisy"].any() else ""


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

