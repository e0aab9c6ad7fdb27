"""README's commands run as written: every line of a ```sh runnable block and every ```python runnable block is
checked without a real sweep. An lstm-bench command is parsed by the CLI's own parser (a renamed flag or
subcommand fails here) and, where it runs nothing (validate, run --dry-run), run for real; a make target is
checked with `make -n`; a script must exist and be executable; the Python block runs."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"```(sh|python) runnable\n(.*?)```", re.S)


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README) if kind == lang]


def sh_lines() -> list[str]:
    lines = []
    for body in blocks("sh"):
        for line in body.splitlines():
            line = re.sub(r"\s+# .*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_readme_has_runnable_blocks_and_stays_short():
    assert len(README.splitlines()) <= 150
    assert len(sh_lines()) >= 10 and blocks("python")


def _lstm_bench_argv(line: str, run_dir: str) -> list[str] | None:
    words = shlex.split(line.replace('"$RUN"', run_dir).replace("$RUN", run_dir))
    if "lstm-bench" not in words:
        return None
    return words[words.index("lstm-bench") + 1:]


@pytest.mark.parametrize("line", sh_lines())
def test_readme_command_is_valid(line):
    from harness.cli import build_parser, main
    run_dir = str(ROOT / "results" / "baselines" / "smoke-cpu" / "20261129-042952-9503")
    if line.startswith("RUN=$("):  # the shell variable later lines use: a run directory exists to stand in
        assert Path(run_dir, "trials.jsonl").exists()
        return
    argv = _lstm_bench_argv(line, run_dir)
    if argv is not None:
        build_parser().parse_args(argv)  # exits 2 (SystemExit) on an unknown subcommand or flag
        for path in (w for w in argv if w.startswith(("suites/", "results/"))):
            assert (ROOT / path).exists(), f"{line}: {path} does not exist"
        if argv[0] == "validate" or "--dry-run" in argv:
            assert main(argv) == 0
        return
    words = shlex.split(line)
    if words[0] == "make":
        subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, check=True, capture_output=True)
    elif words[0].startswith("scripts/"):
        script = ROOT / words[0]
        assert script.exists() and script.stat().st_mode & 0o111, f"{words[0]} is not an executable script"
    else:
        pytest.fail(f"README command of an unknown kind: {line}")


def test_readme_python_runs():
    for body in blocks("python"):
        subprocess.run([sys.executable, "-c", body], cwd=ROOT, check=True, capture_output=True, timeout=120)
