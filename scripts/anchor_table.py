"""Harness figures of a GPU sweep next to the bare-loop H200 figures of shared/anchors.md.

    .venv/bin/python scripts/anchor_table.py RUN_DIR [--anchors ../shared/anchors.md]

Prints a markdown table: for each (seq, hidden) of the anchors' H200 table, images/s of the bare loop and of
the harness trial (train and infer, cudnn/naive/lstmcell), and their ratio. A '*' marks a noisy trial.
"""
import argparse
import re
from pathlib import Path

from harness.store import read_records

COLUMNS = [("train", "cudnn"), ("train", "naive"), ("train", "lstmcell"), ("infer", "cudnn"), ("infer", "naive")]


def anchor_rows(path: Path) -> dict:
    """(seq, hidden) -> [5 numbers or None] from the H200 table of anchors.md."""
    rows, seq = {}, None
    text = path.read_text().split("## This project's CPU machine")[0]
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or not cells[1].isdigit():
            continue
        name = cells[0].split(" (")[0]
        seq = {"row": "row", "patch 4x4": "patch4", "pixel": "pixel"}.get(name, seq)
        rows[(seq, int(cells[1]))] = [int(c.replace(",", "")) if re.fullmatch(r"[\d,]+", c) else None
                                      for c in cells[2:]]
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--anchors", default=str(Path(__file__).resolve().parents[2] / "shared" / "anchors.md"))
    a = p.parse_args()
    df = read_records(a.run_dir)
    df = df[df["status"] == "ok"]
    df["seqlabel"] = [f"patch{int(k)}" if s == "patch" else s for s, k in zip(df["seq"], df["patch_size"].fillna(0))]
    print("| seq | hidden | " + " | ".join(f"{i} {m}: bare / harness" for m, i in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for (seq, hidden), bare in anchor_rows(Path(a.anchors)).items():
        cells = []
        for (mode, impl), b in zip(COLUMNS, bare):
            hit = df[(df.seqlabel == seq) & (df.hidden_size == hidden) & (df["mode"] == mode) & (df.impl == impl)]
            if hit.empty or b is None:
                cells.append("-")
                continue
            r = hit.iloc[0]
            cells.append(f"{b:,} / {r.img_per_s:,.0f}{'*' if r.noisy else ''} ({r.img_per_s / b:.2f})")
        if any(c != "-" for c in cells):
            print(f"| {seq} | {hidden} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
