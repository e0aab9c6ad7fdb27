"""lstm-bench: benchmark and profile LSTM variants on CIFAR-10, swept on Ray.

Data flows one way: suite (suites.py) -> trial specs (spec.py) -> Ray tasks (cluster.py) -> result records
(trial.py, results.py) -> DataFrame -> report (report.py)."""

import os

# Kineto (torch.profiler's backend) logs every profiler start/stop to stderr; keep only real errors.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")
