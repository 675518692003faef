"""The one HTTP client for calls made on a tenant's behalf: model servers, provider
embeddings, the `http_request` tool. A tenant chooses where these go (a model's `base_url`, a
tool's URL), so none may reach a private network: the database, Redis, the cloud's metadata
service, another customer's VPC peer.

    with outbound_client(limits=OutboundLimits(read_seconds=10)) as client:
        client.post(url, json=...)                # follows redirects, checks every hop
    ChatOpenAI(..., http_client=model_http_client(), http_async_client=async_model_http_client())
    check_url(url)                                # when a tenant saves a URL (raises)

How: the connection pool's network backend resolves the host ONCE, refuses the destination
unless every address is public (or on the operator's OUTBOUND_ALLOWED_NETWORKS), and then
connects to the address it checked, never to a second answer of the resolver. TLS still
verifies the certificate of the name in the URL (httpcore passes the URL's host as SNI).
Every request, redirects included, opens its connections through that backend. The
transport bounds the connect and read timeouts whatever the caller asks, the total time and
the size of a response, and asks for uncompressed answers (a small gzip body can inflate
past any limit), refusing a compressed one.

Refusals raise OutboundRefused; limits raise OutboundLimitExceeded. Both carry a stable
`code` and a `message` safe to show the tenant: the host and the reason, never the URL's
path, query or credentials. Nothing is sent before the check: a refused call never carried
the tenant's key anywhere.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import anyio.to_thread
import httpcore2
import httpx2
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

SCHEMES = ("http", "https")
# Well-known ports other than the web's are other protocols (SMTP, SSH, ...): refused unless an
# allow-list entry names the port.
WEB_PORTS = (80, 443)
FIRST_UNPRIVILEGED_PORT = 1024
# A name answering with more addresses than this is tried on its first ones only.
MAX_ADDRESSES = 4
NOT_PRIVATE = "Playbook does not call private networks unless the platform operator allows it."


class OutboundError(Exception):
    """A call on a tenant's behalf that was not made or not finished. `message` is safe to
    show the tenant (no secret, no URL path or query)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class OutboundRefused(OutboundError):
    """The destination is not allowed: nothing was sent."""


class OutboundLimitExceeded(OutboundError):
    """The answer was too large, too slow, or compressed without being asked to be."""


def outbound_error_in(exc: BaseException | None) -> OutboundError | None:
    """The OutboundError that caused `exc` (SDKs wrap it: anthropic's APIConnectionError,
    the embedders' EmbedderUnavailable), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OutboundError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


# --------------------------------------------------------------------------- addresses

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits

# Checked before `is_global`, which (Python 3.11) calls multicast, 192.0.0.0/24, site-local,
# IPv4-compatible and NAT64 addresses global. First match names the reason.
_REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(network), reason)
    for network, reason in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private network"),
        ("100.64.0.0/10", "shared carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local, cloud metadata"),
        ("172.16.0.0/12", "private network"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private network"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)


def refusal_reason(address: IPAddress) -> str | None:
    """Why Playbook does not connect to `address` on its own (None: a public address). An
    IPv6 form that carries an IPv4 address (mapped, NAT64, 6to4) is judged by that address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "scoped"
        if address.ipv4_mapped is not None:
            return refusal_reason(address.ipv4_mapped)
        if address in _NAT64:
            return refusal_reason(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None:
            embedded = refusal_reason(address.sixtofour)
            if embedded is not None:
                return embedded
    for network, reason in _REFUSED_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    if not address.is_global:
        return "not globally routable"
    return None


def _plain(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is (what we connect to)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# The legacy IPv4 spellings inet_aton (and so the system resolver) accepts: 2130706433,
# 0x7f.1, 017700000001, 127.1.
_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, in any form a URL can carry, or None for a name."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.removesuffix(".")
    try:
        return _plain(ipaddress.ip_address(text))
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(text) and any(c.isdigit() for c in text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _name(host: str) -> str:
    return host.strip().lower().removesuffix(".")


def _is_localhost(name: str) -> bool:
    # RFC 6761: localhost and every name under it are the loopback, whatever DNS says.
    return name == "localhost" or name.endswith(".localhost")


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of `host` from the system resolver (getaddrinfo)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (UnicodeError, ValueError) as exc:  # a name IDNA or the C library refuses
        raise socket.gaierror(str(exc)) from None
    return [str(info[4][0]) for info in infos]


class UnresolvableHost(OSError):
    """The host has no address (or the resolver failed): a network error, not a refusal."""


# --------------------------------------------------------------------------- allow-list

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


@dataclass(frozen=True)
class AllowedDestination:
    """One entry of OUTBOUND_ALLOWED_NETWORKS: a network (CIDR or address) or a host name,
    with an optional port."""

    network: IPNetwork | None = None
    host: str | None = None
    port: int | None = None

    def admits(self, name: str, address: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return address.version == self.network.version and address in self.network
        return self.host == name


def _parse_entry(entry: str) -> AllowedDestination:
    text, port = entry.strip(), None
    if text.startswith("["):  # [IPv6 or IPv6 CIDR]:port
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(entry)
        text, port = inside, (int(rest[1:]) if rest else None)
    elif text.count(":") == 1:  # IPv4, CIDR or host name, with a port
        text, _, raw_port = text.partition(":")
        port = int(raw_port)
    if port is not None and not 0 < port < 65536:
        raise ValueError(entry)
    try:
        return AllowedDestination(network=ipaddress.ip_network(text, strict=False), port=port)
    except ValueError:
        pass
    name = _name(text)
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(entry)
    return AllowedDestination(host=name, port=port)


def parse_allowed_destinations(entries: Iterable[str]) -> tuple[AllowedDestination, ...]:
    """OUTBOUND_ALLOWED_NETWORKS, parsed: `10.0.0.0/8`, `192.168.1.20:11434`, `fd00::/8`,
    `[fd00::5]:8000`, `ollama:11434`. Raises ImproperlyConfigured naming the bad entry."""
    parsed = []
    for entry in entries:
        if not entry.strip():
            continue
        try:
            parsed.append(_parse_entry(entry))
        except ValueError:
            raise ImproperlyConfigured(
                f"OUTBOUND_ALLOWED_NETWORKS: {entry.strip()!r} is not a network (CIDR), an "
                "address or a host name, with an optional :port (IPv6 in brackets: "
                "[fd00::1]:8000)."
            ) from None
    return tuple(parsed)


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class OutboundPolicy:
    """Where calls may go: public addresses on web ports, plus the operator's allow-list.
    `resolver` is the DNS lookup (injectable: tests have no DNS server)."""

    allowed: tuple[AllowedDestination, ...] = ()
    resolver: Resolver = field(default=system_resolver)

    @classmethod
    def from_settings(cls, resolver: Resolver | None = None) -> OutboundPolicy:
        return cls(
            allowed=parse_allowed_destinations(settings.OUTBOUND_ALLOWED_NETWORKS),
            resolver=resolver or system_resolver,
        )

    def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            answers = list(self.resolver(host, port))
        except OSError:
            raise UnresolvableHost(f"{host} could not be resolved") from None
        addresses = []
        for answer in answers:
            try:
                addresses.append(ipaddress.ip_address(answer))
            except ValueError:
                continue
        if not addresses:
            raise UnresolvableHost(f"{host} has no address")
        return addresses

    def addresses(self, host: str, port: int) -> list[IPAddress]:
        """The addresses to connect to for host:port, resolved once and each one checked.
        Raises OutboundRefused, or UnresolvableHost (an OSError)."""
        name, literal = _name(host), literal_address(host)
        if literal is not None:
            candidates = [literal]
        elif _is_localhost(name):
            candidates = [ipaddress.IPv4Address("127.0.0.1")]
        else:
            candidates = self._resolve(host, port)
        for address in candidates:
            entry = next((a for a in self.allowed if a.admits(name, _plain(address), port)), None)
            if entry is None:
                reason = refusal_reason(address)
                if reason is not None:
                    shown = host.strip()
                    if literal is None and not _is_localhost(name):
                        message = f"{shown} resolves to an address that is not public ({reason})."
                    else:
                        message = f"{shown} is not a public address ({reason})."
                    raise OutboundRefused("private_address", f"{message} {NOT_PRIVATE}")
            if entry is None or entry.port is None:
                check_port(port)
        return [_plain(a) for a in candidates[:MAX_ADDRESSES]]


def check_port(port: int) -> None:
    if port in WEB_PORTS or FIRST_UNPRIVILEGED_PORT <= port < 65536:
        return
    raise OutboundRefused(
        "port_not_allowed",
        f"Port {port} is not allowed for outbound calls: use 80, 443 or 1024 to 65535.",
    )


def check_scheme(url: httpx2.URL) -> None:
    if url.scheme not in SCHEMES:
        raise OutboundRefused(
            "scheme_not_allowed",
            f"Only http and https addresses can be called (not {url.scheme or 'this'}:).",
        )


def check_url(url: str, *, policy: OutboundPolicy | None = None) -> None:
    """Refuse (OutboundRefused) a URL that no call would be allowed to reach, when a tenant
    saves it. A name that does not resolve now is accepted: DNS may be down or not set up
    yet, and every call checks the address it connects to anyway."""
    try:
        parsed = httpx2.URL(url)
    except (httpx2.InvalidURL, TypeError, ValueError):
        parsed = None
    if parsed is None or not parsed.host:
        raise OutboundRefused("invalid_url", "Give a full http(s) address (https://…).")
    check_scheme(parsed)
    port = parsed.port if parsed.port is not None else 443 if parsed.scheme == "https" else 80
    rules = policy or OutboundPolicy.from_settings()
    try:
        rules.addresses(parsed.host, port)
    except UnresolvableHost:
        # The port rule holds all the same, unless the operator named this host and port.
        if not any(a.host == _name(parsed.host) and a.port == port for a in rules.allowed):
            check_port(port)


# --------------------------------------------------------------------------- network backends


class PinnedBackend(httpcore2.SyncBackend):
    """Opens each connection to an address the policy checked: resolved once, here."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.NetworkStream:
        try:
            addresses = self.policy.addresses(host, port)
        except UnresolvableHost as exc:
            raise httpcore2.ConnectError(str(exc)) from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # noqa: S101 (addresses is never empty)
        raise failure


class AsyncPinnedBackend(httpcore2.AnyIOBackend):
    """PinnedBackend for async clients (the resolver runs in a worker thread)."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            addresses = await anyio.to_thread.run_sync(self.policy.addresses, host, port)
        except UnresolvableHost as exc:
            raise httpcore2.ConnectError(str(exc)) from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # noqa: S101 (addresses is never empty)
        raise failure


# --------------------------------------------------------------------------- transports


@dataclass(frozen=True)
class OutboundLimits:
    """Upper bounds for every request through a transport, whatever its caller asks."""

    connect_seconds: float = 5.0
    read_seconds: float = 30.0
    total_seconds: float = 60.0
    max_response_bytes: int = 1024 * 1024


def _capped(value: Any, cap: float) -> float:
    return cap if value is None else min(float(value), cap)


def _prepare(request: httpx2.Request, limits: OutboundLimits) -> float:
    """Check the scheme, bound the timeouts, ask for an uncompressed answer; the deadline."""
    check_scheme(request.url)
    asked = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {
        "connect": _capped(asked.get("connect"), limits.connect_seconds),
        "read": _capped(asked.get("read"), limits.read_seconds),
        "write": _capped(asked.get("write"), limits.read_seconds),
        "pool": _capped(asked.get("pool"), limits.connect_seconds),
    }
    request.headers["Accept-Encoding"] = "identity"
    return time.monotonic() + limits.total_seconds


def _too_large(limits: OutboundLimits) -> OutboundLimitExceeded:
    return OutboundLimitExceeded(
        "response_too_large",
        f"The answer is larger than {limits.max_response_bytes:,} bytes; it was not read.",
    )


def _too_slow(limits: OutboundLimits) -> OutboundLimitExceeded:
    return OutboundLimitExceeded(
        "response_too_slow", f"The answer took longer than {limits.total_seconds:g} s."
    )


def _refusal(response: httpx2.Response, limits: OutboundLimits) -> OutboundError | None:
    """What is wrong with the response's headers, before any of its body is read."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return OutboundLimitExceeded(
            "compressed_response",
            f"The server sent a compressed ({encoding}) answer that was not asked for.",
        )
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limits.max_response_bytes:
        return _too_large(limits)
    return None


class BoundedStream(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, limits: OutboundLimits, deadline: float):
        self.inner, self.limits, self.deadline = inner, limits, deadline

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        for chunk in self.inner:
            received += len(chunk)
            if received > self.limits.max_response_bytes:
                raise _too_large(self.limits)
            if time.monotonic() > self.deadline:
                raise _too_slow(self.limits)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class AsyncBoundedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limits: OutboundLimits, deadline: float):
        self.inner, self.limits, self.deadline = inner, limits, deadline

    async def __aiter__(self) -> AsyncIterator[bytes]:
        received = 0
        async for chunk in self.inner:
            received += len(chunk)
            if received > self.limits.max_response_bytes:
                raise _too_large(self.limits)
            if time.monotonic() > self.deadline:
                raise _too_slow(self.limits)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Built once per process (loading the trust store is the slow part); shared, read-only.
    return httpx2.create_ssl_context(verify=True, trust_env=True)


class OutboundTransport(httpx2.HTTPTransport):
    """httpx2's transport on a connection pool whose backend is a PinnedBackend."""

    def __init__(
        self,
        policy: OutboundPolicy,
        limits: OutboundLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        ssl_context = ssl_context or _ssl_context()
        super().__init__(verify=ssl_context, trust_env=False)
        pool = httpx2.Limits()
        self._pool = httpcore2.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=pool.max_connections,
            max_keepalive_connections=pool.max_keepalive_connections,
            keepalive_expiry=pool.keepalive_expiry,
            network_backend=PinnedBackend(policy),
        )
        self.limits = limits

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        deadline = _prepare(request, self.limits)
        response = super().handle_request(request)
        refused = _refusal(response, self.limits)
        if refused is None and time.monotonic() > deadline:
            refused = _too_slow(self.limits)
        if refused is not None or not isinstance(response.stream, httpx2.SyncByteStream):
            response.close()
            raise refused or OutboundLimitExceeded("bad_stream", "The answer could not be read.")
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=BoundedStream(response.stream, self.limits, deadline),
            extensions=response.extensions,
        )


class AsyncOutboundTransport(httpx2.AsyncHTTPTransport):
    def __init__(
        self,
        policy: OutboundPolicy,
        limits: OutboundLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        ssl_context = ssl_context or _ssl_context()
        super().__init__(verify=ssl_context, trust_env=False)
        pool = httpx2.Limits()
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=pool.max_connections,
            max_keepalive_connections=pool.max_keepalive_connections,
            keepalive_expiry=pool.keepalive_expiry,
            network_backend=AsyncPinnedBackend(policy),
        )
        self.limits = limits

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        deadline = _prepare(request, self.limits)
        response = await super().handle_async_request(request)
        refused = _refusal(response, self.limits)
        if refused is None and time.monotonic() > deadline:
            refused = _too_slow(self.limits)
        if refused is not None or not isinstance(response.stream, httpx2.AsyncByteStream):
            await response.aclose()
            raise refused or OutboundLimitExceeded("bad_stream", "The answer could not be read.")
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=AsyncBoundedStream(response.stream, self.limits, deadline),
            extensions=response.extensions,
        )


# --------------------------------------------------------------------------- clients

MAX_REDIRECTS = 3
# Model and embedding calls: completions can take a minute; a batch of embeddings is a few MB.
MODEL_LIMITS = OutboundLimits(
    connect_seconds=10.0,
    read_seconds=120.0,
    total_seconds=300.0,
    max_response_bytes=32 * 1024 * 1024,
)


def _no_cookies() -> CookieJar:
    # A shared client must not carry one tenant's cookies into another tenant's calls.
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def outbound_client(
    *,
    limits: OutboundLimits | None = None,
    follow_redirects: bool = True,
    policy: OutboundPolicy | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx2.Client:
    """A client for one call (close it, or use it as a context manager). Redirects are
    followed up to MAX_REDIRECTS hops, each one checked; httpx2 drops the Authorization
    header when a hop leaves the origin. `ssl_context`: other trusted roots than the
    system's (certificates are always verified, for the name in the URL)."""
    limits = limits or OutboundLimits()
    return httpx2.Client(
        transport=OutboundTransport(policy or OutboundPolicy.from_settings(), limits, ssl_context),
        timeout=httpx2.Timeout(limits.read_seconds, connect=limits.connect_seconds),
        follow_redirects=follow_redirects,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,  # no proxy or .netrc from the environment
        cookies=_no_cookies(),
    )


def async_outbound_client(
    *,
    limits: OutboundLimits | None = None,
    follow_redirects: bool = True,
    policy: OutboundPolicy | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx2.AsyncClient:
    limits = limits or OutboundLimits()
    return httpx2.AsyncClient(
        transport=AsyncOutboundTransport(
            policy or OutboundPolicy.from_settings(), limits, ssl_context
        ),
        timeout=httpx2.Timeout(limits.read_seconds, connect=limits.connect_seconds),
        follow_redirects=follow_redirects,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,
        cookies=_no_cookies(),
    )


@functools.lru_cache(maxsize=4)
def _shared_model_client(allowed: tuple[str, ...]) -> httpx2.Client:
    # Keyed by the allow-list, so a changed setting (tests) gets a client of its own.
    del allowed
    return outbound_client(limits=MODEL_LIMITS, follow_redirects=False)


def model_http_client() -> httpx2.Client:
    """The process's client for the model and embedding SDKs (kept open: its connections
    are reused across calls). SDKs send keys in headers other than Authorization
    (Anthropic's x-api-key), which httpx2 would forward on a redirect: it follows none."""
    return _shared_model_client(tuple(settings.OUTBOUND_ALLOWED_NETWORKS))


def async_model_http_client() -> httpx2.AsyncClient:
    """A new async client for one model object: async connections belong to one event loop."""
    return async_outbound_client(limits=MODEL_LIMITS, follow_redirects=False)
