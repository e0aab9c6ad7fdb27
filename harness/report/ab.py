"""The report of an `lstm-bench ab` session: the answer first (one table: cell, ratio, interval, verdict, MDE,
pairs), then a forest plot (each cell's ratio with its interval, the +/- threshold band shaded), then what the
session was (both sides' code, settings, calibration, reruns). Markdown, HTML (the plot inline) and CSV."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from ..store import atomic_write
from .plots import _figure

VERDICT_COLORS = {"regression": "tab:red", "improvement": "tab:green", "unchanged": "tab:gray",
                  "inconclusive": "tab:orange"}
HEADLINE = ["cell", "ratio", "interval", "verdict", "mde", "pairs", "reruns", "lost", "order AB/BA",
            "order bias", "baseline img/s", "candidate img/s"]


def headline(rows: list[dict]) -> pd.DataFrame:
    """The table shown first: ratios as candidate / baseline img/s (below 1: the candidate is slower)."""
    def pct(x):
        return "" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"
    out = []
    for r in rows:
        finite = math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"])
        out.append({"cell": r["cell"], "ratio": f"{r['ratio']:.3f}" if math.isfinite(r["ratio"]) else "",
                    "interval": f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] ({100 * r['level']:.0f}%)" if finite
                    else "unbounded (too few pairs)",
                    "verdict": r["verdict"], "mde": f"{100 * r['mde']:.1f}%" if math.isfinite(r["mde"]) else "",
                    "pairs": r["pairs"], "reruns": r["reruns"], "lost": r["lost"],
                    "order AB/BA": f"{r['ab_pairs']}/{r['ba_pairs']}", "order bias": pct(r["order_bias"]),
                    "baseline img/s": f"{r['baseline_img_per_s']:,.0f}" if math.isfinite(r["baseline_img_per_s"])
                    else "", "candidate img/s": f"{r['candidate_img_per_s']:,.0f}"
                    if math.isfinite(r["candidate_img_per_s"]) else ""})
    return pd.DataFrame(out, columns=HEADLINE)


def forest_plot(rows: list[dict], threshold: float, path: Path) -> Path | None:
    """Ratio with its interval per cell; the band 1 +/- threshold shaded; colour by verdict."""
    shown = [r for r in rows if math.isfinite(r["ratio"])]
    if not shown:
        return None
    fig = _figure(7.5, 0.45 * len(shown) + 1.4)
    ax = fig.add_subplot()
    ax.axvspan(1 - threshold, 1 + threshold, color="0.9", zorder=0, label=f"1 ± {threshold:g}")
    ax.axvline(1.0, color="0.5", lw=0.8)
    for y, r in enumerate(reversed(shown)):
        lo = r["ci_low"] if math.isfinite(r["ci_low"]) else r["ratio"]
        hi = r["ci_high"] if math.isfinite(r["ci_high"]) else r["ratio"]
        color = VERDICT_COLORS.get(r["verdict"], "k")
        ax.errorbar(r["ratio"], y, xerr=[[r["ratio"] - lo], [hi - r["ratio"]]], fmt="o", color=color, capsize=3)
        ax.annotate(f"{r['verdict']} ({r['pairs']} pairs)", (hi, y), xytext=(6, -3), textcoords="offset points",
                    fontsize=8, color=color)
    ax.set_yticks(range(len(shown)), [r["cell"] for r in reversed(shown)], fontsize=8)
    ax.set_xlabel("candidate / baseline img/s (Hodges-Lehmann, with its interval)")
    ax.margins(x=0.25)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path)
    return path


def write_report(run_dir: Path, rows: list[dict], meta: dict) -> Path:
    """run_dir/verdicts.csv, ab.md, ab.html and forest.png; returns ab.md."""
    run_dir = Path(run_dir)
    settings = meta["settings"]
    pd.DataFrame(rows).to_csv(run_dir / "verdicts.csv", index=False)
    plot = forest_plot(rows, settings["threshold"], run_dir / "forest.png")
    table = headline(rows)
    trees = meta.get("trees", {})
    sides = "; ".join(f"{s}: {t.get('label')} ({(t.get('commit') or '')[:12]}, tree {t.get('tree')})"
                      for s, t in trees.items())
    sets = meta.get("candidate_sets") or {}
    facts = [f"command: `{meta.get('command', '')}`", f"code: {sides}",
             f"candidate overrides: {', '.join(f'{k}={v}' for k, v in sets.items()) or 'none'}",
             f"settings: {settings['pairs']} pairs per cell, +{settings['step']} for inconclusive cells up to "
             f"{settings['max_pairs']}; threshold {settings['threshold']:g}; BH alpha {settings['alpha']:g}",
             f"hardware: {', '.join(meta.get('hw_fingerprints') or []) or 'unknown'}; calibration: "
             f"{meta.get('calibration') or 'none (MDE from this session alone)'}",
             f"status: {meta.get('status')}; started {meta.get('started_at')}, ended {meta.get('ended_at')}"]
    counts = table["verdict"].value_counts().to_dict()
    answer = ", ".join(f"{n} {v}" for v, n in counts.items())
    md = [f"# A/B: {answer}", "",
          "Ratio = candidate / baseline img/s (below 1: the candidate is slower), the Hodges-Lehmann estimate of "
          "the per-pair ratios with its exact interval; verdicts: regression/improvement when BH-selected and the "
          f"interval lies beyond 1 ± {settings['threshold']:g}, unchanged inside it, else inconclusive. MDE: the "
          "smallest change these pairs would call with 80% power.", "",
          table.to_markdown(index=False), ""]
    if plot:
        md += ["![forest plot](forest.png)", ""]
    md += ["## Session", "", *[f"- {f}" for f in facts], ""]
    atomic_write(run_dir / "ab.md", "\n".join(md))
    img = (f'<img alt="forest plot" src="data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()}">'
           if plot else "")
    body = (f"<h1>A/B: {html.escape(answer)}</h1><p>{html.escape(md[2])}</p>"
            f"{table.to_html(index=False, escape=True)}{img}<h2>Session</h2><ul>"
            + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>")
    atomic_write(run_dir / "ab.html", f"<!doctype html><html><head><meta charset='utf-8'><title>A/B</title>"
                                      f"<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px}}"
                                      f"</style></head><body>{body}</body></html>")
    return run_dir / "ab.md"
