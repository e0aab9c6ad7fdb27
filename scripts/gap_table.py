"""The close-the-gap table of docs/closing-the-gap.md from one run of suites/close-the-gap-cpu.yaml: median img/s
per impl (noisy trials shown and marked, not dropped: on this 2-core VM most are), and the share of the
naive-to-cudnn gap the compiled cell closes, (compiled - naive) / (cudnn - naive).

    .venv/bin/python scripts/gap_table.py results/close-the-gap-cpu/RUN_ID

The report's own gap table (`lstm-bench report RUN`, tables/gap.csv) uses only trials that are not noisy.
"""
import json
import sys
from pathlib import Path


def main(run: Path) -> None:
    rows = {(r["hidden_size"], r["mode"], r["impl"]): r
            for r in map(json.loads, (run / "trials.jsonl").read_text().splitlines())}

    def cell(r):
        return f"{r['img_per_s']:,.0f}{' (noisy)' if r['noisy'] else ''}"

    print("| hidden | mode | cudnn | naive | lstmcell | compiled | gap closed by compiled | compile_s |")
    print("|---|---|---|---|---|---|---|---|")
    for h in sorted({k[0] for k in rows}):
        for m in ("train", "infer"):
            c, n, k = (rows[(h, m, i)]["img_per_s"] for i in ("cudnn", "naive", "compiled"))
            cells = " | ".join(cell(rows[(h, m, i)]) for i in ("cudnn", "naive", "lstmcell", "compiled"))
            print(f"| {h} | {m} | {cells} | {(k - n) / (c - n):.2f} | "
                  f"{rows[(h, m, 'compiled')].get('compile_s') or 0:.1f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
