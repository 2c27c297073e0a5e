"""Take the README's screenshot of the live view (``docs/live-view.png``).

    python scripts/screenshot_live_view.py [--out docs/live-view.png] [--seconds 5]

Runs the real command, on a moving rendered clip and a moving synthetic source, paced in
real time::

    streamer run pipelines/webcam_labels.toml --source tests/data/motion_demo.mp4 \\
        --source 'synthetic:shapes?size=320x240&seed=3' --pace realtime --serve 127.0.0.1:0

reads the page's address from the line the run prints, loads it in a headless Chromium
(``tests/browser.py``: Debian's ``chromium`` and ``chromium-driver``) at 1280x800, waits
until both videos play and the charts hold ``--seconds`` of scores, saves the window as a
PNG (compressed, at most 8 bits a channel) and stops the run as Ctrl-C would.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import browser_missing, make_driver, wait_js  # noqa: E402

STREAMS = ("motion_demo", "shapes")
SOURCES = ("tests/data/motion_demo.mp4", "synthetic:shapes?size=320x240&seed=3")
VIEW = "window.streamerView"


def start_run() -> tuple[subprocess.Popen[str], str]:
    """The ``streamer run ... --serve`` process and the page's address it printed."""
    command = [sys.executable, "-m", "streamer.cli", "run", "pipelines/webcam_labels.toml"]
    for uri in SOURCES:
        command += ["--source", uri]
    out = Path(tempfile.mkdtemp()) / "live-view.jsonl"
    command += ["--pace", "realtime", "--quiet", "--out", str(out), "--serve", "127.0.0.1:0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert run.stderr is not None
    for line in run.stderr:
        sys.stderr.write(line)
        found = re.search(r"live view at (\S+)", line)
        if found:
            return run, found.group(1)
    run.wait()
    raise SystemExit(f"the run ended (exit {run.returncode}) before it served the page")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "live-view.png")
    parser.add_argument("--seconds", type=float, default=5.0, help="of the run before the shot")
    args = parser.parse_args()
    missing = browser_missing()
    if missing is not None:
        raise SystemExit(f"screenshot: missing {missing}")

    run, url = start_run()
    driver = make_driver()
    try:
        driver.get(url)
        wait_js(driver, f"{VIEW}.connected", "the page to connect")
        for stream in STREAMS:
            wait_js(driver, f"{VIEW}.framesShown({stream!r}) >= 5", f"video of {stream}")
        time.sleep(args.seconds)  # the charts fill up as the run goes on
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
        run.send_signal(signal.SIGINT)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            run.kill()
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit("screenshot: the browser's screenshot is not a PNG")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    size = args.out.stat().st_size
    print(f"{args.out}: {image.shape[1]}x{image.shape[0]}, {size // 1024} KB")


if __name__ == "__main__":
    main()
