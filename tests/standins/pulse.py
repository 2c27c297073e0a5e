"""A private PulseAudio server with a virtual microphone, for real PortAudio capture.

A null sink ``vsink`` (16 kHz mono s16le) and a remap source ``vmic`` of its monitor, the
default source; ``paplay -d vsink FILE.wav`` is what a capture of ``vmic`` hears, bit-exact.
Clients find the server through ``PULSE_SERVER`` (set by :meth:`PulseServer.start`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONFIG = """\
load-module module-native-protocol-unix auth-anonymous=1 socket={socket}
load-module module-null-sink sink_name=vsink rate=16000 channels=1 format=s16le
load-module module-remap-source master=vsink.monitor source_name=vmic
set-default-source vmic
"""


class PulseServer:
    """``start()`` runs the server (as any user, root included) and points clients at it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="streamer-pulse-"))
        self.socket = self.root / "native"
        self.process: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ)

    def start(self, timeout: float = 15.0) -> None:
        pulseaudio = shutil.which("pulseaudio")
        if pulseaudio is None:
            raise FileNotFoundError("pulseaudio")
        (self.root / "run").mkdir()
        (self.root / "home").mkdir()
        config = self.root / "default.pa"
        config.write_text(CONFIG.format(socket=self.socket), encoding="utf-8")
        env = dict(os.environ, XDG_RUNTIME_DIR=str(self.root / "run"), HOME=str(self.root / "home"))
        self.process = subprocess.Popen(
            [
                pulseaudio,
                "-n",
                "-F",
                str(config),
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                "--disallow-exit",
                "--log-target=stderr",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private PulseAudio server did not start")
            time.sleep(0.05)
        os.environ["PULSE_SERVER"] = f"unix:{self.socket}"
        self.env = dict(os.environ)

    def play(self, wav: Path) -> subprocess.Popen[bytes]:
        """Play ``wav`` into the virtual microphone (returns the running ``paplay``)."""
        return subprocess.Popen(
            ["paplay", "-d", "vsink", str(wav)], env=self.env, stdin=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        os.environ.pop("PULSE_SERVER", None)
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def virtual_microphone() -> Iterator[PulseServer]:
    """A private server that PortAudio (through sounddevice) captures from: started, and
    PortAudio re-initialised to see it; afterwards stopped and PortAudio re-initialised."""
    from streamer.sources.microphone import import_sounddevice

    sd = import_sounddevice()
    server = PulseServer()
    server.start()
    sd._terminate()  # PortAudio reads its configuration (PULSE_SERVER) when initialised
    sd._initialize()
    try:
        yield server
    finally:
        server.stop()
        sd._terminate()
        sd._initialize()
