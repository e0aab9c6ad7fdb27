"""Run the fault-injection and bad-input tests and print a markdown table of what was tried and what happened.

Usage:
    .venv/bin/python scripts/reliability_table.py > /tmp/reliability.md
    .venv/bin/python scripts/reliability_table.py -k "not cluster"     # extra arguments go to pytest

Each row: the fault or input tried (from the test's name), the test, passed/failed/skipped, and the counts
the test printed ("planned 4, ok 4, failed 0, lost 0, ..."; "checked: ..." summaries; "known gap ..." lines
for the CLI's open gaps).
Per-test output comes from pytest's JUnit XML (junit_logging=system-out). Exit status: pytest's.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_faults.py",
    "tests/test_cluster.py",
    "tests/test_worker_faults.py",
    "tests/test_security.py",
    "tests/test_cli_properties.py",
    "tests/test_netns.py",
    "tests/test_netns_faults.py",
    "tests/test_cifar.py",
    # the suite-file bad-input tests, not the shipped-suite and grid checks
    "tests/test_suites.py::test_error_is_one_line_with_file_path_and_problem",
    "tests/test_suites.py::test_missing_file_directory_and_bad_bytes",
    "tests/test_suites.py::test_long_values_do_not_make_long_messages",
    "tests/test_suites.py::test_mutated_suite_is_a_suite_or_one_line_suite_error",
    "tests/test_suites.py::test_any_file_text_is_a_suite_or_one_line_suite_error",
]
COUNTS = re.compile(r"(planned \d+.*|former gap .*|^checked: .*|.*per host.*)", re.MULTILINE)


def describe(name: str) -> str:
    base, _, param = name.partition("[")
    text = base.removeprefix("test_").replace("_", " ")
    return f"{text} [{param}" if param else text


def cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml_path}",
               "-o", "junit_logging=system-out", "-o", "junit_family=xunit2", *TESTS, *extra]
        print(f"running: {' '.join(cmd[2:])}", file=sys.stderr)
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        took = time.time() - start
        if not xml_path.exists():
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            print(f"pytest wrote no report (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode or 1
        root = ET.parse(xml_path).getroot()

    rows, tally = [], {"passed": 0, "failed": 0, "skipped": 0}
    for case in root.iter("testcase"):
        name = case.get("name", "")
        module = case.get("classname", "").rpartition(".")[2]
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        tally[outcome] += 1
        out = "\n".join(e.text or "" for e in case.iter("system-out"))
        counts = "; ".join(m.group(1).strip() for m in COUNTS.finditer(out))
        if outcome == "skipped":
            counts = counts or (case.find("skipped").get("message") or "")
        if outcome == "failed":
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            counts = (counts + "; " if counts else "") + (bad.get("message") or "").splitlines()[0][:120]
        rows.append((describe(name), f"{module}::{name}", outcome, counts))

    print("| fault / input tried | test | outcome | counts |")
    print("|---|---|---|---|")
    for what, test, outcome, counts in rows:
        print(f"| {cell(what, 90)} | `{cell(test, 120)}` | {outcome} | {cell(counts) or '—'} |")
    print(f"\n{tally['passed']} passed, {tally['failed']} failed, {tally['skipped']} skipped in {took:.0f} s "
          f"(pytest exit {proc.returncode}).")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
