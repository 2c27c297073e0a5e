"""Helpers for the real-browser tests: a headless Chromium driven by selenium, waits that
poll the page with a deadline, and a live pipeline run on a thread of its own whose web
sink the browser looks at.

The browser is Debian's ``chromium`` with its matching ``chromium-driver`` (installed by
``make test``); selenium is pointed at both, so it never looks for (or downloads) a
driver of its own. :func:`browser_missing` says what is absent; the ``browser`` fixture in
``conftest.py`` turns that into a skip locally and a failure in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: The window the page is looked at in (the README screenshot's size too).
WINDOW = (1280, 800)
#: Longest a wait on the page or the run may take before the test fails.
DEADLINE = 15.0


# -- the browser -----------------------------------------------------------------------------


def browser_missing() -> str | None:
    """What the browser tests need and this machine lacks (None: nothing)."""
    if importlib.util.find_spec("selenium") is None:
        return "the selenium package (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.is_file():
            return f"{path} (apt-get install {package})"
    return None


def make_driver(window: tuple[int, int] = WINDOW) -> Any:
    """A headless Chromium (selenium ``WebDriver``) at ``window`` pixels."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # runs as root in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",  # a small /dev/shm in containers
        "--disable-extensions",
        "--no-first-run",
        "--hide-scrollbars",
        f"--window-size={window[0]},{window[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    # the page itself gets ``window`` (a headless window's size includes its toolbars)
    metrics = {"width": window[0], "height": window[1], "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.set_page_load_timeout(DEADLINE)
    driver.set_script_timeout(DEADLINE)
    return driver


def wait_until(
    probe: Callable[[], Any], what: str, timeout: float = DEADLINE, every: float = 0.1
) -> Any:
    """Poll ``probe()`` until it returns something truthy and return that; after
    ``timeout`` seconds fail the test naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s: {what}; last: {last!r}")
        time.sleep(every)


def wait_js(
    driver: Any, expression: str, what: str | None = None, timeout: float = DEADLINE
) -> Any:
    """Poll a JavaScript ``expression`` in the page until it is truthy; its value."""

    def probe() -> Any:
        script = f"try {{ return ({expression}); }} catch (e) {{ return null; }}"
        return driver.execute_script(script)

    return wait_until(probe, what or expression, timeout)


def element_image(element: Any) -> np.ndarray[Any, Any]:
    """What the browser shows of ``element`` now, as a BGR image."""
    data = np.frombuffer(element.screenshot_as_png, np.uint8)
    image: np.ndarray[Any, Any] | None = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert image is not None, "the element's screenshot is not an image"
    return image


# -- a live run for the browser to look at ---------------------------------------------------


def pipeline_config(
    base: str | Path,
    sources: Sequence[dict[str, Any]],
    sinks: Sequence[dict[str, Any]],
    **run: Any,
) -> Any:
    """A ready pipeline file's ``[model]`` with these ``[[sources]]``, ``[[sinks]]`` and
    ``[run]`` settings, validated like a file (a ``PipelineConfig``)."""
    from streamer.config import parse_config

    data = tomllib.loads((REPO / base).read_text(encoding="utf-8"))
    data.pop("source", None)
    data["sources"] = [dict(s) for s in sources]
    data["sinks"] = [dict(s) for s in sinks]
    data["run"] = {**data.get("run", {}), **run}
    return parse_config(data, str(base))


class LiveRun:
    """A pipeline running on a thread with its own event loop, as ``streamer run`` would
    run it; the test thread talks to it only through :meth:`stop` and what it serves.
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        self.pipeline: Any = None
        self.summary: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._built = threading.Event()
        self._thread = threading.Thread(target=self._main, name="live-run", daemon=True)

    def _main(self) -> None:
        from streamer.build import build_pipeline

        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            pipeline = build_pipeline(self.config)
            self.pipeline = pipeline
            self._built.set()
            self.summary = loop.run_until_complete(pipeline.run())
        except BaseException as exc:
            self.error = exc
        finally:
            self._built.set()
            loop.close()

    def start(self) -> LiveRun:
        self._thread.start()
        self._built.wait(60.0)
        if self.error is not None:
            raise self.error
        return self

    @property
    def web(self) -> Any:
        """The web sink, once its server listens (waits for it)."""

        def started() -> Any:
            if self.error is not None:
                raise self.error
            for sink in self.pipeline.sinks:
                server = getattr(sink, "server", None)
                if server is not None and server.port:
                    return sink
            return None

        return wait_until(started, "the web sink's server to listen")

    @property
    def url(self) -> str:
        return str(self.web.server.url)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the run to end by itself; its metrics summary."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the run did not end within {timeout:g} s"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """Stop the sources (the run drains, as after Ctrl-C) and wait for the end."""
        if self._thread.is_alive() and self._loop is not None and self.pipeline is not None:
            self._loop.call_soon_threadsafe(self.pipeline.stop)
        return self.wait(timeout)

    def __enter__(self) -> LiveRun:
        return self.start()

    def __exit__(self, *_: object) -> None:
        if self._thread.is_alive():
            try:
                self.stop()
            except BaseException:
                if self._loop is not None and self.pipeline is not None:
                    self._loop.call_soon_threadsafe(self.pipeline.abort)
                self._thread.join(10.0)
                raise


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """A ``WebServer`` (``streamer serve``'s) started on an event loop of its own thread,
    stopped at the end."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="web-server", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(DEADLINE)
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(DEADLINE)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()


def jsonl_records(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL file being written (a partial last line is skipped)."""
    import json

    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n"):
            records.append(json.loads(line))
    return records


def iter_stream(records: Sequence[dict[str, Any]], stream: str) -> Iterator[dict[str, Any]]:
    """The frame outputs of one stream, in order."""
    return (r for r in records if r.get("stream") == stream and r.get("kind", "frame") == "frame")
