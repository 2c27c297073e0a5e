"""``streamer devices``: the microphones PortAudio lists and the cameras that open.

Cameras are probed safely: on Linux only the ``/dev/video*`` nodes that exist are tried;
elsewhere indices 0..3. Each probe runs in a daemon thread with a short time-out, so a
driver that hangs costs a second, never the command. Without PortAudio the microphone part
says why and the rest still works.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from typing import Any

from streamer.errors import InputError

PROBE_TIMEOUT = 2.0


def list_devices() -> dict[str, Any]:
    """``{"microphones": [...], "microphone_error": str | None, "cameras": [...]}``."""
    microphones: list[dict[str, Any]] = []
    error: str | None = None
    try:
        from streamer.sources.microphone import import_sounddevice, input_devices

        microphones = input_devices(import_sounddevice())
    except InputError as exc:
        error = str(exc)
    return {"microphones": microphones, "microphone_error": error, "cameras": probe_cameras()}


def camera_candidates() -> list[int]:
    """Device indices worth trying: existing ``/dev/videoN`` on Linux, else 0..3."""
    if sys.platform.startswith("linux"):
        found = []
        for node in Path("/dev").glob("video*"):
            match = re.fullmatch(r"video(\d+)", node.name)
            if match:
                found.append(int(match.group(1)))
        return sorted(found)
    return [0, 1, 2, 3]


def probe_cameras(timeout: float = PROBE_TIMEOUT) -> list[dict[str, Any]]:
    """The cameras that open and deliver a frame within ``timeout`` each."""
    return [info for index in camera_candidates() if (info := _probe(index, timeout))]


def _probe(index: int, timeout: float) -> dict[str, Any] | None:
    result: dict[str, Any] = {}

    def attempt() -> None:
        import cv2

        cap = cv2.VideoCapture(index)
        try:
            if cap.isOpened() and cap.grab():
                result.update(
                    index=index,
                    uri=f"camera:{index}",
                    width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                    height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                    fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
                )
        finally:
            cap.release()

    thread = threading.Thread(target=attempt, name=f"probe-camera{index}", daemon=True)
    thread.start()
    thread.join(timeout)
    return result or None


def format_devices(devices: dict[str, Any]) -> str:
    """The listing for a terminal."""
    lines = ["microphones (mic:INDEX or mic:NAME; * = the default, mic:):"]
    if devices["microphone_error"]:
        lines.append(f"  unavailable: {devices['microphone_error']}")
    elif not devices["microphones"]:
        lines.append("  none")
    for mic in devices["microphones"]:
        mark = "*" if mic["default"] else " "
        lines.append(
            f" {mark}{mic['index']:>3}  {mic['name']}  ({mic['channels']} ch,"
            f" {mic['default_rate']:g} Hz)"
        )
    lines.append("cameras (camera:INDEX; IP cameras: camera:URL):")
    if not devices["cameras"]:
        lines.append("  none found")
    for cam in devices["cameras"]:
        lines.append(
            f"  {cam['index']:>3}  {cam['width']}x{cam['height']}"
            + (f" @ {cam['fps']:g} fps" if cam["fps"] else "")
        )
    return "\n".join(lines)
