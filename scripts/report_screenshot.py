"""Screenshot a report.html in headless Chromium: what a reader sees on the first screen.

    python scripts/report_screenshot.py REPORT_HTML OUT_PNG [--size 1400x900] [--browser /usr/bin/chromium]

docs/report.png (the README's picture) is made this way from the committed smoke baseline's report; the test in
tests/test_report.py uses it to check that the page renders in a real browser. Chromium is not a dependency of
the project (`apt-get install chromium` on Debian); without it this exits 2 with one line.

A fresh --user-data-dir per shot, and no network, sync, component updates or first-run pages: the shot must
not depend on, or touch, a browser profile or the network. The report is self-contained (plots are data
URIs), so nothing needs to load.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--force-device-scale-factor=1"]


def find_browser() -> str | None:
    return next((b for b in BROWSERS if Path(b).exists()), None) or shutil.which("chromium")


def screenshot(html: Path, png: Path, size: tuple[int, int] = (1400, 900), browser: str | None = None,
               timeout: float = 120) -> Path:
    """Render `html` at `size` (width, height in CSS pixels) into `png`; RuntimeError when Chromium fails."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="lstm-bench-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--screenshot={png}", Path(html).resolve().as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-500:]}")
    return png


def dump_dom(html: Path, size: tuple[int, int] = (1400, 900), browser: str | None = None,
             timeout: float = 120) -> str:
    """The page's DOM after it loaded and its scripts ran, laid out at `size`: how a test reads positions a
    script measured in the real browser (a screenshot cannot say where an element ended)."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="lstm-bench-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               "--dump-dom", Path(html).resolve().as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0 or "<html" not in res.stdout:
        raise RuntimeError(f"chromium --dump-dom failed (exit {res.returncode}): {res.stderr[-500:]}")
    return res.stdout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("html", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--size", default="1400x900", help="WIDTHxHEIGHT in pixels (default 1400x900)")
    p.add_argument("--browser", default=None, help="the Chromium binary (default: the first of " +
                   ", ".join(BROWSERS) + ")")
    a = p.parse_args(argv)
    try:
        w, h = (int(v) for v in a.size.lower().split("x"))
        out = screenshot(a.html, a.png, (w, h), a.browser)
    except (ValueError, FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"report_screenshot: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
