"""`make demo`: the smoke suite on an embedded local Ray (loopback, CPU), its results table, and its report.

About four minutes on 2 cores (220 s at fe38389); writes results/smoke/<run_id>/ (gitignored: demo runs are not reference runs).
"""
import sys

from harness.cli import main

if __name__ == "__main__":
    rc = main(["run", "suites/smoke.yaml", "--report"])
    sys.exit(rc)
