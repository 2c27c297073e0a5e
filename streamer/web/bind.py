"""Where the live view listens, and who may see it.

``bind`` is ``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` (``127.0.0.1`` when no host is
given; port 0 picks a free one). The socket is bound and listening as soon as it is opened
(:func:`open_socket`), before the run starts: a port in use refuses the run early, and
the port is held from then on.

A loopback address needs no token; any other address does (an open port on a network
would show the run to anyone). The token comes from the file (``token``), an environment
variable (``token_env``), or is generated; it is compared in constant time.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass

from streamer.errors import InputError

DEFAULT_HOST = "127.0.0.1"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class Bind:
    """An address to listen on."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def __str__(self) -> str:
        return f"{url_host(self.host)}:{self.port}"


def parse_bind(text: str, where: str) -> Bind:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` -> :class:`Bind`; an InputError naming
    ``where`` for anything else."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InputError(
            f"{where}: bad address '{text}': write an IPv6 address in brackets, [::1]:8080"
        )
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InputError(
            f"{where}: bad address '{text}': expected PORT or HOST:PORT with a port 0-65535"
        )
    if not host:
        raise InputError(f"{where}: bad address '{text}': the host is empty")
    return Bind(host, int(port_text))


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """Whether ``host`` means every interface (0.0.0.0, ::)."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def url_host(host: str) -> str:
    """``host`` as written in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def open_socket(bind: Bind, where: str) -> socket.socket:
    """A TCP socket bound to ``bind`` and listening; an InputError naming the address
    when it cannot be (a port in use, an address that is not this machine's)."""
    try:
        infos = socket.getaddrinfo(
            bind.host, bind.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise InputError(
            f"{where}: bad address '{bind}': cannot resolve '{bind.host}' ({exc.strerror})"
        ) from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":  # lets a restarted run take the port at once (TIME_WAIT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            reason = f"port {bind.port} is in use"
        elif exc.errno == errno.EADDRNOTAVAIL:
            reason = f"'{bind.host}' is not an address of this machine"
        elif exc.errno == errno.EACCES:
            reason = f"no permission to listen on port {bind.port}"
        else:
            reason = exc.strerror or str(exc)
        raise InputError(f"{where}: cannot listen on {bind}: {reason}") from None
    return sock


def resolve_token(bind: Bind, token: str | None, token_env: str | None, where: str) -> str | None:
    """The token requests must carry: ``token``, else ``$token_env`` (an InputError when
    it is unset or empty), else a generated one unless the address is loopback."""
    if token is not None and token_env is not None:
        raise InputError(f"{where}: give token or token_env, not both")
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            raise InputError(f"{where}: token_env: ${token_env} is unset or empty")
    if token is not None:
        return token
    return None if bind.loopback else secrets.token_urlsafe(18)
