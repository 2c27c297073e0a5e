"""A real mosquitto broker for the tests: started on a free port with its own config file,
stopped (or killed, and started again on the same port) by its PID.

:func:`make_certificates` makes a CA, a broker certificate for ``localhost`` /
``127.0.0.1`` and a client certificate with ``openssl``, for the TLS tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA, the broker's certificate and key, a client's certificate and key,
    and a second CA that signed none of them (an untrusted one)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_certificates(folder: Path) -> Certificates:
    """Generate the :class:`Certificates` in ``folder`` with the ``openssl`` program."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    for ca in ("ca", "other-ca"):
        run(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-subj", f"/CN=streamer test {ca}",
        )  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, extra in (("server", ["-extfile", "server.ext"]), ("client", [])):
        run(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={'localhost' if name == 'server' else name}",
        )  # fmt: skip
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", *extra,
        )  # fmt: skip
    return Certificates(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        other_ca=folder / "other-ca.pem",
    )


class Mosquitto:
    """One mosquitto process on ``127.0.0.1:port``, configured by ``lines`` (a listener
    line is added). ``start`` waits until it accepts connections; ``kill`` ends it at
    once (SIGKILL: a crash, no goodbye to clients); ``start`` again reuses the port."""

    def __init__(self, folder: Path, lines: list[str] | None = None, port: int | None = None):
        self.folder = folder
        self.port = port or free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        # As root, mosquitto would switch to its own user, who cannot read pytest's
        # private temporary folders (the config's files); as anyone else it stays who it is.
        body = [
            f"listener {self.port} 127.0.0.1",
            "user root" if os.geteuid() == 0 else "",
            *(lines or ["allow_anonymous true"]),
        ]
        self.config.write_text("\n".join([*body, "persistence false", ""]))
        self.log = folder / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, topic: str = "", scheme: str = "mqtt") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{topic}"

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def kill(self) -> None:
        """End the broker at once (SIGKILL) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """End the broker politely (SIGTERM), or kill it if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
