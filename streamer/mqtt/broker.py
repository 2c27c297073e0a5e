"""Where an MQTT broker is and how to reach it: the ``mqtt://`` / ``mqtts://`` URL, the
connection options shared by the MQTT sink, source and ``streamer publish`` (credentials,
TLS files, client id, keep-alive, time-out), and one-line errors that name the broker.

A URL is ``mqtt[s]://[USER@]HOST[:PORT]/TOPIC[?key=value&...]``: the topic is everything
after the host's ``/`` (``#`` and ``+`` wildcards are kept as they are, not read as a URL
fragment), and the query carries the same keys as a ``[[sinks]]`` table (``qos``,
``retain``, ``client_id``, ``keepalive``, ``ca``, ``cert``, ``key``, ``username``,
``password_env``, ...), so one ``--mqtt`` or ``--source`` flag can say everything. A password
is never taken from a URL (it would show in ``ps`` and shell history): it comes from the
pipeline file (``password``) or an environment variable (``password_env``), and no message
or summary prints it.

``aiomqtt`` (the maintained successor of asyncio-mqtt) is imported only when a client is
made, so reading a pipeline file never loads it.
"""

from __future__ import annotations

import os
import socket
import ssl
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote

from pydantic import Field

from streamer.errors import InputError
from streamer.options import Float, Int, Section, Str

if TYPE_CHECKING:
    import aiomqtt

DEFAULT_PORT = {"mqtt": 1883, "mqtts": 8883}
Scheme = Literal["mqtt", "mqtts"]


class BrokerOptions(Section):
    """How to reach the broker (``[[sinks]] type = "mqtt"`` keys, or a URL's query).

    ``url``: ``mqtt[s]://HOST[:PORT]/TOPIC``. ``username``; ``password`` (in the file) or
    ``password_env`` (the environment variable holding it). TLS (``mqtts://``, or any of
    these): ``ca`` (the CA file to trust; the system's CAs when unset), ``cert`` and ``key``
    (a client certificate), ``tls_insecure`` (do not check the broker's host name).
    ``client_id`` (the broker's default when unset), ``keepalive`` seconds, ``timeout``:
    seconds to connect before a try counts as failed."""

    url: Str
    username: Str | None = None
    password: Str | None = Field(default=None, repr=False)
    password_env: Str | None = None
    ca: Str | None = None
    cert: Str | None = None
    key: Str | None = None
    tls_insecure: bool = False
    client_id: Str | None = None
    keepalive: Annotated[Int, Field(ge=1, le=65535)] = 30
    timeout: Annotated[Float, Field(gt=0, le=3600)] = 5.0


@dataclass(frozen=True)
class Broker:
    """A broker resolved from :class:`BrokerOptions`: address, topic, credentials, TLS.

    ``label`` (``mqtt://HOST:PORT``) is how every message names it; the password is
    never part of it, nor of ``repr``."""

    scheme: Scheme
    host: str
    port: int
    topic: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    tls_insecure: bool = False
    client_id: str | None = None
    keepalive: int = 30
    timeout: float = 5.0

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts" or self.ca is not None or self.cert is not None

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context (CA, client certificate), or None for plain TCP. A file that is
        missing or not what it should be is refused naming the file and the key."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        except (OSError, ssl.SSLError) as exc:
            raise InputError(
                f"{self.label}: ca {self.ca}: not a usable CA file ({_why(exc)})"
            ) from None
        if self.cert is not None:
            try:
                context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
            except (OSError, ssl.SSLError) as exc:
                files = f"{self.cert}" + (f" / key {self.key}" if self.key else "")
                raise InputError(
                    f"{self.label}: cert {files}: not a usable client certificate ({_why(exc)})"
                ) from None
        if self.tls_insecure:
            context.check_hostname = False
        return context

    def client(
        self, *, will: tuple[str, bytes, int, bool] | None = None, **extra: Any
    ) -> aiomqtt.Client:
        """A (not yet connected) ``aiomqtt.Client`` for this broker; ``will``: ``(topic,
        payload, qos, retain)`` the broker publishes if the connection is lost. Must be
        called on the running event loop. Its socket sends at once (``TCP_NODELAY``, as
        mosquitto's ``set_tcp_nodelay``): paho writes a publish in two sends, and Nagle's
        algorithm may hold the second until the broker acknowledges the first."""
        import aiomqtt

        extra.setdefault("socket_options", ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),))
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id,
            keepalive=self.keepalive,
            timeout=self.timeout,
            tls_context=self.tls_context(),
            will=aiomqtt.Will(*will) if will is not None else None,
            **extra,
        )

    def error(self, exc: BaseException) -> str:
        """One line for a failed connection or a lost one, naming the broker (never the
        password)."""
        return f"{self.label}: {describe(exc, self.timeout)}"

    def cannot_connect(self, exc: BaseException) -> str:
        """One line for a first connection that failed: host, port and time-out named."""
        return (
            f"{self.label}: cannot connect (host {self.host}, port {self.port}, time-out"
            f" {self.timeout:g} s): {describe(exc, self.timeout)}"
        )


def describe(exc: BaseException, timeout: float) -> str:
    """What went wrong with a connection, in words (an aiomqtt, socket or TLS error)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (host down, wrong port, or a firewall)"
    cause: BaseException = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        if isinstance(cause, ssl.SSLError):
            break
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate is not trusted ({cause.verify_message})"
    if isinstance(cause, ssl.SSLError):
        return f"TLS: {_why(cause)}"
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    # a CONNACK's code (a paho ReasonCode), not paho's own error numbers (4: not connected,
    # 5: connection refused, 7: connection lost...), which are ints
    connack = type(exc).__name__ == "MqttConnectError" or not isinstance(rc, int | None)
    if connack and code in (4, 5, 134, 135):  # bad user name or password / not authorised
        return "not authorised: wrong username or password"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "refused" in text.lower() and code is None:
        return f"connection refused ({text})"
    return text


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason) if reason else " ".join(str(exc).split()) or type(exc).__name__


def split_url(url: str, what: str) -> tuple[Scheme, str, int, str, dict[str, str]]:
    """``mqtt[s]://[USER@]HOST[:PORT]/TOPIC[?QUERY]`` -> scheme, host, port, topic (may be
    empty), the query's keys (``username`` from ``USER@``). ``what`` names the flag or key
    in errors."""
    head, sep, rest = url.partition("://")
    if not sep or head not in DEFAULT_PORT:
        raise InputError(f"{what}: {url}: expected mqtt://HOST[:PORT]/TOPIC or mqtts://...")
    scheme: Scheme = "mqtts" if head == "mqtts" else "mqtt"
    rest, _, query = rest.partition("?")
    netloc, _, topic = rest.partition("/")
    keys = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        if colon:
            raise InputError(
                f"{what}: {_redact(url)}: a password in the URL is refused (it shows in process "
                "lists); give password_env=VARIABLE or password in the pipeline file"
            )
        keys.setdefault("username", unquote(user))
    host, port = _host_port(hostport, scheme, url, what)
    return scheme, host, port, unquote(topic), keys


def _host_port(hostport: str, scheme: Scheme, url: str, what: str) -> tuple[str, int]:
    if hostport.startswith("["):  # [IPv6]:port
        host, _, after = hostport[1:].partition("]")
        port_text = after.removeprefix(":")
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise InputError(f"{what}: {_redact(url)}: no broker host")
    if not port_text:
        return host, DEFAULT_PORT[scheme]
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise InputError(f"{what}: {_redact(url)}: port {port_text!r} is not 1-65535")
    return host, int(port_text)


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    head, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    return f"{head}{sep}{netloc}{slash}{tail}"


def resolve(options: BrokerOptions, what: str, topic_default: str = "") -> Broker:
    """The :class:`Broker` of ``options``: address and topic from its URL (``topic_default``
    when the URL has none), ``username`` from the keys or else the URL's ``USER@``. The TLS
    files must exist and load, and ``password_env`` must name a set variable."""
    scheme, host, port, topic, keys = split_url(options.url, what)
    password = options.password
    if options.password_env is not None:
        password = os.environ.get(options.password_env)
        if password is None:
            raise InputError(
                f"{what}: password_env: the environment variable {options.password_env} is not set"
            )
    files: dict[str, Path | None] = {}
    for key in ("ca", "cert", "key"):
        value = getattr(options, key)
        path = Path(value) if value else None
        if path is not None and not path.is_file():
            raise InputError(f"{what}: {key}: {path}: no such file")
        files[key] = path
    if files["key"] is not None and files["cert"] is None:
        raise InputError(f"{what}: key: a client key needs its certificate (cert)")
    broker = Broker(
        scheme=scheme,
        host=host,
        port=port,
        topic=topic or topic_default,
        username=options.username or keys.get("username"),
        password=password,
        ca=files["ca"],
        cert=files["cert"],
        key=files["key"],
        tls_insecure=options.tls_insecure,
        client_id=options.client_id,
        keepalive=options.keepalive,
        timeout=options.timeout,
    )
    broker.tls_context()  # bad TLS files are refused now, before the run starts
    return broker


def options_from_url(url: str, what: str, model: type[BrokerOptions], **fixed: Any) -> Any:
    """A ``model`` (:class:`BrokerOptions` or a subclass) from a URL and its query (``--mqtt
    URL``, a source URI), plus ``fixed`` keys; unknown or bad query keys are refused
    naming the key."""
    from pydantic import ValidationError

    _, _, _, _, keys = split_url(url, what)
    if "password" in keys:
        raise InputError(
            f"{what}: password: refused in a URL (it shows in process lists); use password_env"
        )
    values: dict[str, Any] = {**keys, **fixed, "url": url}
    fields = model.model_fields
    for name, text in keys.items():
        if name not in fields or name == "url":
            known = ", ".join(sorted(k for k in fields if k not in ("url", "type", "password")))
            raise InputError(f"{what}: unknown query key {name!r}; expected one of: {known}")
        values[name] = _typed(text, fields[name].annotation)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise InputError(f"{what}: {where}: {error['msg']}") from None


def _typed(text: str, annotation: Any) -> Any:
    """A query value as the field's type wants it (numbers, booleans; text otherwise)."""
    kinds = repr(annotation)
    if "bool" in kinds and text.lower() in ("1", "true", "yes", "0", "false", "no"):
        return text.lower() in ("1", "true", "yes")
    if "int" in kinds and text.lstrip("-").isdigit():
        return int(text)
    if "float" in kinds:
        try:
            return float(text)
        except ValueError:
            return text
    return text


def check_template(template: str, key: str, what: str, fields: Sequence[str]) -> None:
    """Refuse a topic template to publish to that names a field not in ``fields``,
    formats one, holds a wildcard, or is empty or a ``$`` topic (``what``: how errors
    name the sink or flag; ``key``: the key)."""
    known = ", ".join(f"{{{name}}}" for name in fields)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InputError(f"{what}: {key}: {template!r}: {exc}; fields: {known}") from None
    for literal, name, spec, conversion in parts:
        if "+" in literal or "#" in literal:
            raise InputError(f"{what}: {key}: {template!r}: no wildcards (+, #) in a topic")
        if name is None:
            continue
        if name not in fields:
            raise InputError(
                f"{what}: {key}: {template!r} names an unknown field {{{name}}}; known: {known}"
            )
        if spec or conversion:
            raise InputError(f"{what}: {key}: {template!r}: write fields plainly, as {{{name}}}")
    if not template or template.startswith("$"):
        raise InputError(f"{what}: {key}: {template!r}: not a topic to publish to")
