"""The close-the-gap table of docs/closing-the-gap.md from one run of suites/close-the-gap-cpu.yaml: median img/s
per impl (noisy trials shown and marked, not dropped: on this 2-core VM most are), and the share of the
naive-to-cudnn gap the compiled cell closes, (compiled - naive) / (cudnn - naive).

    .venv/bin/python scripts/gap_table.py results/close-the-gap-cpu/RUN_ID

The report's own gap table (`lstm-bench report RUN`, tables/gap.csv) uses only trials that are not noisy.
Lines of trials.jsonl that are torn or not records are skipped (and counted on stderr), and the latest record
of a trial wins, as everywhere else (harness.store).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.store import latest_by_trial, read_jsonl  # noqa: E402


def main(run: Path) -> None:
    records, bad = read_jsonl(run / "trials.jsonl")
    if bad:
        print(f"gap_table: skipped {bad} unreadable line(s) of {run / 'trials.jsonl'}", file=sys.stderr)
    rows = {(r["hidden_size"], r["mode"], r["impl"]): r for r in latest_by_trial(records).values()
            if r.get("status") == "ok"}

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
