"""Shared fixtures. In CI (CI=true) a missing real component fails instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mosquitto import Certificates, Mosquitto, make_certificates

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip locally, fail in CI, when a real component the test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required component missing in CI: {what}")
    pytest.skip(f"missing: {what}")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"the '{name}' program")
    assert path is not None
    return path


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for a module's tests (deterministic, no oversubscription)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the test from the repository root (ready pipelines' paths are relative to it)."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One anonymous mosquitto broker for the whole session (each test uses its own
    topics). Tests that kill or restart a broker make their own :class:`Mosquitto`."""
    require_binary("mosquitto")
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A test CA, a broker certificate for 127.0.0.1 and a client certificate (openssl)."""
    require_binary("openssl")
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def tls_mosquitto(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[Mosquitto]:
    """A mosquitto broker over TLS that wants a client certificate signed by the test CA
    and the user ``streamer`` with the password ``s3cret``."""
    require_binary("mosquitto")
    folder = tmp_path_factory.mktemp("mosquitto-tls")
    passwords = folder / "passwords"
    passwords.write_text("")
    subprocess.run(
        [require_binary("mosquitto_passwd"), "-b", str(passwords), "streamer", "s3cret"],
        check=True,
        capture_output=True,
    )
    passwords.chmod(0o600)
    c = certificates
    broker = Mosquitto(
        folder,
        [
            f"cafile {c.ca}",
            f"certfile {c.server_cert}",
            f"keyfile {c.server_key}",
            "require_certificate true",
            "allow_anonymous false",
            f"password_file {passwords}",
        ],
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium (a selenium ``WebDriver``, see ``tests/browser.py``) for the
    session; each test loads its own page. Missing: a skip locally, a failure in CI."""
    from browser import browser_missing, make_driver

    missing = browser_missing()
    require(missing is None, missing or "")
    driver = make_driver()
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """The session's browser, left on a blank page after the test (no socket stays open)."""
    yield browser
    browser.get("about:blank")
