"""Rendering: one cell formatter, one table renderer per format, one table of block kinds.

A table is shown through its display frame: `fmt_cell` applied once to every cell (12345.6 -> "12,346",
4.0 in a ratio column -> "4.00", NaN -> ""). Markdown renders that frame with `DataFrame.to_markdown`
(tabulate, pipe format; numbers right-aligned), HTML with pandas' Styler (escaped; numeric cells get class
"n"). A report is a Doc, a list of (kind, *args) blocks; BLOCKS maps each kind to its markdown and its HTML
renderer, and `render` is the one loop over the blocks for either format.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .frame import _missing

COUNT_COLS = {"hidden_size", "num_layers", "batch_size", "patch_size", "threads", "repeat", "planned", "recorded",
              "ok", "failed", "infeasible", "noisy", "missing", "unreadable_lines", "epochs", "epochs_run", "trials",
              "launches_per_step"}


def fmt_cell(col: str, v) -> str:
    if _missing(v):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return _fmt_float(col, float(v))
    return str(v)


def _fmt_float(col: str, v: float) -> str:
    if math.isinf(v):
        return str(v)
    if col in COUNT_COLS and v.is_integer():
        return str(int(v))
    if "/" in col or col == "ratio":
        return f"{v:.2f}"
    if col.startswith("share_") or col.endswith("_share") or col.endswith("acc") or col == "rel_iqr":
        return f"{v:.3f}"
    if col.endswith("_s") and not col.endswith("per_s"):
        return f"{v:,.1f}"
    if col == "lr":
        return f"{v:g}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _numeric_col(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def display_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, list[bool]]:
    """The table as shown: every cell through fmt_cell (by its column's name), column names as text; and
    which columns are numeric (right-aligned in both formats)."""
    cols = [str(c) for c in df.columns]
    shown = pd.DataFrame({i: [fmt_cell(c, v) for v in df.iloc[:, i]] for i, c in enumerate(cols)}, dtype=object)
    shown.columns = cols
    return shown, [_numeric_col(df.iloc[:, i]) for i in range(len(cols))]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A markdown (pipe) table of the display frame; "(none)" for an empty table."""
    if df.empty:
        return "(none)"
    shown, numeric = display_frame(df)
    shown = shown.map(_md_escape).rename(columns=_md_escape)
    return shown.to_markdown(index=False, tablefmt="pipe", disable_numparse=True,
                             colalign=["right" if n else "left" for n in numeric])


def html_table(df: pd.DataFrame) -> str:
    """An HTML table of the display frame, cells and headers escaped, numeric cells of class "n"."""
    if df.empty:
        return "<p><em>(none)</em></p>"
    from pandas.io.formats.style import Styler
    shown, numeric = display_frame(df)
    classes = pd.DataFrame([["n" if n else "" for n in numeric]] * len(shown), index=shown.index,
                           columns=shown.columns)
    styler = Styler(shown, cell_ids=False, escape="html").format_index(escape="html", axis=1)
    with pd.option_context("styler.render.max_elements", shown.size + 1):    # never trim a long table
        return styler.hide(axis="index").set_td_classes(classes).to_html()


# ---- blocks -----------------------------------------------------------------------------------------------

def _esc(text: str) -> str:
    return html.escape(str(text))


def _md_img(path: Path, rel: str, caption: str) -> str:
    return f"![{caption}]({rel})"


def _html_img(path: Path, rel: str, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f"<figure><img alt=\"{_esc(caption)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _md_details(summary: str, blocks: list) -> str:
    # GitHub and most markdown viewers render raw <details>; the blank lines let the inner markdown render
    return f"<details><summary>{_esc(summary)}</summary>\n\n" + "\n\n".join(render(blocks, "markdown")) + \
        "\n\n</details>"


def _html_details(summary: str, blocks: list) -> str:
    return f"<details><summary>{_esc(summary)}</summary>\n" + "\n".join(render(blocks, "html")) + "\n</details>"


# kind: (markdown renderer, HTML renderer), each called with the block's arguments
BLOCKS = {
    "h": (lambda level, text: "#" * level + " " + text, lambda level, text: f"<h{level}>{_esc(text)}</h{level}>"),
    "p": (lambda text: text, lambda text: f"<p>{_esc(text)}</p>"),
    "code": (lambda text: f"```\n{text}\n```", lambda text: f"<pre>{_esc(text)}</pre>"),
    "ul": (lambda items: "\n".join(f"- {x}" for x in items),
           lambda items: "<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in items) + "</ul>"),
    "table": (markdown_table, html_table),
    "img": (_md_img, _html_img),
    "details": (_md_details, _html_details),     # collapsed: a summary line, the inner blocks on a click
}
FORMATS = ("markdown", "html")

HTML_HEAD = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n<title>{title}</title>\n"
             "<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}"
             "table{{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}}"
             "th,td{{border:1px solid #ccc;padding:2px 6px}}th{{background:#f0f0f0}}td.n{{text-align:right}}"
             "tbody tr:nth-child(even){{background:#fafafa}}img{{max-width:100%}}"
             "pre{{background:#f4f4f4;padding:0.5em;white-space:pre-wrap}}summary{{cursor:pointer;font-weight:bold}}</style>\n</head><body>\n")


def render(blocks: list, fmt: str) -> list[str]:
    """Each block rendered in `fmt` ("markdown" or "html")."""
    which = FORMATS.index(fmt)
    return [BLOCKS[kind][which](*args) for kind, *args in blocks]


@dataclass
class Doc:
    """A report as a list of blocks, rendered both to markdown and to HTML."""
    blocks: list = field(default_factory=list)

    def add(self, kind: str, *args):
        if kind not in BLOCKS:
            raise ValueError(f"unknown block kind {kind!r}")
        self.blocks.append((kind, *args))

    def h(self, level: int, text: str):
        self.add("h", level, text)

    def p(self, text: str):
        self.add("p", text)

    def code(self, text: str):
        self.add("code", text)

    def items(self, lines: list[str]):
        self.add("ul", lines)

    def table(self, df: pd.DataFrame):
        self.add("table", df)

    def img(self, path: Path, rel: str, caption: str):
        self.add("img", path, rel, caption)

    def details(self, summary: str, inner: "Doc"):
        """`inner`'s blocks, collapsed under `summary` (an HTML <details>, in markdown too)."""
        self.add("details", summary, inner.blocks)

    def markdown(self) -> str:
        return "\n\n".join(render(self.blocks, "markdown")) + "\n"

    def html(self, title: str) -> str:
        return HTML_HEAD.format(title=_esc(title)) + "\n".join(render(self.blocks, "html")) + "\n</body></html>\n"
