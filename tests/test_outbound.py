"""No call made on a tenant's behalf reaches a private network (tenants.outbound).

The outbound client is driven against real HTTP servers on the loopback and on 127.0.0.2 (the
loopback is private, so a server the client may reach is admitted by the operator's
allow-list, as a self-hosted model server would be). There is no DNS server here: names are
answered by a resolver the test passes in, the one stand-in. End to end, a tenant's model,
embedder and HTTP tool pointed at a private address fail with a clear error, and the server
behind that address never receives a request, so no key ever left.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.exceptions import ImproperlyConfigured
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django.urls import reverse
from langchain_core.messages import HumanMessage
from pydantic import SecretStr

from agents.anthropic_chat import OutboundChatAnthropic
from agents.entitlements import grant_override
from agents.models import AgentRun, Document, TenantEntitlement
from agents.tools import TOOLS, ToolContext, ToolError
from conversations.threads import status_line
from tenants.context import tenant_context
from tenants.models import Tenant
from tenants.outbound import (
    MAX_REDIRECTS,
    AllowedDestination,
    OutboundLimitExceeded,
    OutboundLimits,
    OutboundPolicy,
    OutboundRefused,
    async_outbound_client,
    check_url,
    outbound_client,
    outbound_error_in,
    parse_allowed_destinations,
)
from tenants.vault.service import create_credential
from tests.factories import UserFactory, World, set_plan
from tests.test_agents import (  # noqa: F401 (fixtures)
    ENTITLEMENTS,
    acme,
    ask,
    audit_events,
    eager,
    get_run,
    logged_in,
    plan_defaults,
    stack,
)
from tests.test_settings import load_settings

KEY = "sk-tenant-9f8e7d6c5b4a39281706"
NOT_PRIVATE = "Playbook does not call private networks unless the platform operator allows it."


# --------------------------------------------------------------------------- stand-ins


@dataclass
class Server:
    """A real HTTP server on a local address, recording every request it receives."""

    host: str
    port: int
    received: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


Respond = Callable[[BaseHTTPRequestHandler, Server], None]


def ok(handler: BaseHTTPRequestHandler, server: Server) -> None:
    body = json.dumps({"answer": "from " + server.host}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@contextmanager
def serve(
    respond: Respond = ok,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ssl.SSLContext | None = None,
) -> Iterator[Server]:
    record = Server(host, port)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_one(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            record.received.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": self.headers,  # case-insensitive, as HTTP headers are
                    "body": self.rfile.read(length) if length else b"",
                }
            )
            respond(self, record)

        do_GET = do_POST = handle_one

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    record.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def twin_servers() -> Iterator[tuple[Server, Server]]:
    """Two servers on the same port, one on 127.0.0.2 and one on 127.0.0.1."""
    for _ in range(20):
        with serve(host="127.0.0.2") as first:
            try:
                with serve(host="127.0.0.1", port=first.port) as second:
                    yield first, second
                    return
            except OSError:  # that port is taken on 127.0.0.1: try another
                continue
    raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")


class Resolver:
    """The DNS stand-in: answers from a table (or a script of answers), counting lookups."""

    def __init__(self, table: dict[str, list[list[str]]] | None = None) -> None:
        self.table = table or {}
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        answers = self.table.get(host.rstrip("."), [])
        if not answers:
            raise OSError(f"{host}: no such name")
        return answers.pop(0) if len(answers) > 1 else answers[0]


def policy(*allowed: str, resolver: Resolver | None = None) -> OutboundPolicy:
    return OutboundPolicy(
        allowed=parse_allowed_destinations(allowed), resolver=resolver or Resolver()
    )


def refusal(
    rules: OutboundPolicy, url: str, method: str = "GET", **request: Any
) -> OutboundRefused:
    """Why the outbound client refuses this request (it must refuse it)."""
    with outbound_client(policy=rules) as client, pytest.raises(OutboundRefused) as refused:
        client.request(method, url, **request)
    return refused.value


# --------------------------------------------------------------------------- private addresses

LOOPBACK_SPELLINGS = [
    "http://127.0.0.1:{port}/",
    "http://127.0.0.1.:{port}/",
    "http://2130706433:{port}/",
    "http://0x7f000001:{port}/",
    "http://0x7f.1:{port}/",
    "http://0x7f.0.0.1:{port}/",
    "http://017700000001:{port}/",
    "http://127.1:{port}/",
    "http://127.0.1:{port}/",
    "http://127.42.0.9:{port}/",
    "http://0:{port}/",
    "http://0.0.0.0:{port}/",
    "http://[::1]:{port}/",
    "http://[0:0:0:0:0:0:0:1]:{port}/",
    "http://[::]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/",
    "http://[::127.0.0.1]:{port}/",
    "http://[64:ff9b::127.0.0.1]:{port}/",
    "http://[2002:7f00:1::]:{port}/",
    "http://localhost:{port}/",
    "http://localhost.:{port}/",
    "http://LocalHost:{port}/",
    "http://api.localhost:{port}/",
    "http://user:hunter2@127.0.0.1:{port}/",
    "http://public.example.com@127.0.0.1:{port}/",
    "https://127.0.0.1:{port}/",
]

OTHER_PRIVATE = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://2852039166/",
    "http://10.0.0.1/",
    "http://10.255.255.255:8080/",
    "http://172.16.5.4/",
    "http://172.31.255.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://198.18.0.1/",
    "http://198.19.255.1/",
    "http://192.0.0.8/",
    "http://192.0.2.10/",
    "http://224.0.0.1/",
    "http://239.255.255.250:1900/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fc00::1]/",
    "http://[fd12:3456:789a::1]/",
    "http://[fec0::1]/",
    "http://[ff02::1]/",
    "http://[2001:db8::1]/",
    "http://[2001:2::1]/",
    "http://[2001::1]/",
    "http://[100::1]/",
    "http://[64:ff9b:1::a00:1]/",
]


@pytest.mark.parametrize("template", LOOPBACK_SPELLINGS)
def test_every_spelling_of_the_loopback_is_refused_before_connecting(template: str) -> None:
    resolver = Resolver()
    with serve() as server:
        url = template.format(port=server.port)
        refused = refusal(
            policy(resolver=resolver),
            url,
            "POST",
            json={"q": 1},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        with pytest.raises(OutboundRefused) as at_save_time:
            check_url(url, policy=policy(resolver=resolver))
    assert server.received == []  # not even a connection carried the key
    assert resolver.lookups == []  # the address is in the URL: no DNS
    assert refused.code == at_save_time.value.code == "private_address"
    message = refused.message
    assert message.endswith(NOT_PRIVATE)
    assert "is not a public address (" in message
    assert KEY not in message and "hunter2" not in message and "user" not in message


@pytest.mark.parametrize("url", OTHER_PRIVATE)
def test_private_link_local_metadata_multicast_and_reserved_addresses_are_refused(
    url: str,
) -> None:
    resolver = Resolver()
    refused = refusal(policy(resolver=resolver), url)
    assert refused.code == "private_address"
    assert "/latest" not in refused.message  # the host and why, never the path
    with pytest.raises(OutboundRefused):
        check_url(url, policy=policy(resolver=resolver))
    assert resolver.lookups == []


def test_an_octal_address_the_url_parser_rejects_is_not_called_either() -> None:
    with serve() as server:
        url = f"http://0177.0.0.1:{server.port}/"
        with outbound_client(policy=policy()) as client, pytest.raises(httpx2.InvalidURL):
            client.get(url)
        with pytest.raises(OutboundRefused) as refused:
            check_url(url, policy=policy())
    assert refused.value.code == "invalid_url"
    assert server.received == []


@pytest.mark.parametrize(
    ("name", "answer", "reason"),
    [
        ("intranet.example", ["10.1.2.3"], "private network"),
        ("metadata.example", ["169.254.169.254"], "link-local, cloud metadata"),
        ("imds6.example", ["fd00:ec2::254"], "unique local"),
        ("loop.example", ["127.0.0.1"], "loopback"),
        ("loop6.example", ["::1"], "loopback"),
        ("mapped.example", ["::ffff:192.168.0.1"], "private network"),
        ("nat64.example", ["64:ff9b::a00:5"], "private network"),
        ("cgnat.example", ["100.64.1.1"], "shared carrier-grade NAT"),
        # One private answer among public ones is enough: which would be dialled is luck.
        ("mixed.example", ["93.184.216.34", "127.0.0.1"], "loopback"),
    ],
)
def test_a_name_that_resolves_to_a_private_address_is_refused(
    name: str, answer: list[str], reason: str
) -> None:
    resolver = Resolver({name: [answer]})
    with serve() as server:
        for host in (name, name + ".", name.upper()):
            url = f"http://{host}:{server.port}/v1/chat/completions"
            auth = {"Authorization": f"Bearer {KEY}"}
            refused = refusal(policy(resolver=resolver), url, "POST", headers=auth)
            assert refused.code == "private_address"
            assert refused.message == (
                f"{host.lower()} resolves to an address that is not public ({reason}). "
                + NOT_PRIVATE
            )
    assert server.received == []
    assert len(resolver.lookups) == 3  # once per request


def test_a_name_is_resolved_once_and_the_checked_address_is_the_one_dialled() -> None:
    """DNS rebinding: the first answer passes the check (127.0.0.2, admitted by the allow-list,
    plays the public address), the second is the loopback. The connection goes to the
    address that was checked; the server on the second answer never hears from us."""
    with twin_servers() as (vetted, rebound):
        resolver = Resolver({"rebind.example": [["127.0.0.2"], ["127.0.0.1"]]})
        rules = policy("127.0.0.2", resolver=resolver)
        url = f"http://rebind.example:{vetted.port}/lookup"
        with outbound_client(policy=rules) as client:
            response = client.get(url, headers={"Authorization": f"Bearer {KEY}"})
        assert response.json() == {"answer": "from 127.0.0.2"}
        assert resolver.lookups == ["rebind.example"]
        [request] = vetted.received
        assert request["headers"]["Host"] == f"rebind.example:{vetted.port}"
        assert rebound.received == []

        # The next connection resolves again, gets the loopback, and is refused.
        with outbound_client(policy=rules) as client, pytest.raises(OutboundRefused):
            client.get(url, headers={"Authorization": f"Bearer {KEY}"})
        assert resolver.lookups == ["rebind.example", "rebind.example"]
        assert rebound.received == [] and len(vetted.received) == 1


def self_signed(name: str, directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_to_the_checked_address_verifies_the_certificate_of_the_name(tmp_path: Path) -> None:
    cert, key = self_signed("models.example", tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    sni: list[str | None] = []

    def record_sni(_socket: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        sni.append(name)

    server_tls.sni_callback = record_sni
    trusted = ssl.create_default_context(cafile=str(cert))
    resolver = Resolver({"models.example": [["127.0.0.2"]]})
    with serve(host="127.0.0.2", tls=server_tls) as server:
        rules = policy("127.0.0.2", resolver=resolver)
        with outbound_client(policy=rules, ssl_context=trusted) as client:
            response = client.get(f"https://models.example:{server.port}/v1/models")
        assert response.status_code == 200
        assert sni == ["models.example"]
        assert server.received[0]["headers"]["Host"] == f"models.example:{server.port}"
        # The same server by its address: the certificate is not for 127.0.0.2, refused.
        with (
            outbound_client(policy=rules, ssl_context=trusted) as client,
            pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            client.get(f"https://127.0.0.2:{server.port}/v1/models")
    assert len(server.received) == 1


# --------------------------------------------------------------------------- redirects


def redirect_to(location: Callable[[Server], str], status: int = 302) -> Respond:
    def respond(handler: BaseHTTPRequestHandler, server: Server) -> None:
        handler.send_response(status)
        handler.send_header("Location", location(server))
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return respond


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{other}/stolen",
        "http://[::ffff:127.0.0.1]:{other}/stolen",
        "http://2130706433:{other}/stolen",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
    ],
)
def test_a_redirect_to_a_refused_address_is_refused(target: str) -> None:
    with serve() as other:
        location = target.format(other=other.port)
        with serve(redirect_to(lambda _server: location)) as first:
            rules = policy(f"127.0.0.1:{first.port}")
            with outbound_client(policy=rules) as client, pytest.raises(OutboundRefused) as err:
                client.post(f"{first.url}/start", headers={"Authorization": f"Bearer {KEY}"})
    assert err.value.code == "private_address"
    assert [r["path"] for r in first.received] == ["/start"]
    assert other.received == []


def test_a_redirect_to_another_scheme_is_refused() -> None:
    with serve(redirect_to(lambda _server: "file:///etc/passwd")) as first:
        rules = policy(f"127.0.0.1:{first.port}")
        with outbound_client(policy=rules) as client, pytest.raises(OutboundRefused) as err:
            client.get(first.url)
    assert err.value.code == "scheme_not_allowed"


def test_redirects_are_followed_a_bounded_number_of_times_each_hop_checked() -> None:
    with serve() as final, serve(redirect_to(lambda _s: f"{final.url}/final", 307)) as first:
        rules = policy(f"127.0.0.1:{first.port}", f"127.0.0.1:{final.port}")
        with outbound_client(policy=rules) as client:
            response = client.post(
                f"{first.url}/start",
                json={"query": "order 42"},
                headers={"Authorization": f"Bearer {KEY}"},
            )
    assert response.json() == {"answer": "from 127.0.0.1"}
    assert first.received[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    [followed] = final.received
    assert (followed["method"], followed["path"]) == ("POST", "/final")
    assert json.loads(followed["body"]) == {"query": "order 42"}
    assert "Authorization" not in followed["headers"]  # the key stays with its origin

    with serve(redirect_to(lambda server: f"{server.url}/again")) as loop:
        rules = policy(f"127.0.0.1:{loop.port}")
        with outbound_client(policy=rules) as client, pytest.raises(httpx2.TooManyRedirects):
            client.get(f"{loop.url}/start")
    assert len(loop.received) == MAX_REDIRECTS + 1


# --------------------------------------------------------------------------- limits


def test_an_answer_larger_than_the_limit_is_not_read() -> None:
    written: list[int] = []

    def endless(handler: BaseHTTPRequestHandler, server: Server) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"x" * 65536
        total = 0
        try:
            for _ in range(1024):  # 64 MiB if nobody stops reading
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                total += len(chunk)
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        written.append(total)

    def declared(handler: BaseHTTPRequestHandler, server: Server) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(50 * 1024 * 1024))
        handler.end_headers()
        handler.close_connection = True

    limits = OutboundLimits(max_response_bytes=256 * 1024)
    with serve(endless) as streaming, serve(declared) as big:
        rules = policy("127.0.0.1")
        with outbound_client(policy=rules, limits=limits) as client:
            with pytest.raises(OutboundLimitExceeded) as streamed:
                client.get(streaming.url)
            with pytest.raises(OutboundLimitExceeded) as announced:
                client.get(big.url)
        deadline = time.monotonic() + 10
        while not written and time.monotonic() < deadline:
            time.sleep(0.05)
    assert streamed.value.code == announced.value.code == "response_too_large"
    assert streamed.value.message == "The answer is larger than 262,144 bytes; it was not read."
    assert written and written[0] < 64 * 1024 * 1024  # the client hung up early


def test_a_server_that_does_not_answer_in_time_is_dropped() -> None:
    release = threading.Event()

    def silent(handler: BaseHTTPRequestHandler, server: Server) -> None:
        release.wait(10)

    def drip(handler: BaseHTTPRequestHandler, server: Server) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            while not release.wait(0.05):
                handler.wfile.write(b"1\r\nx\r\n")
                handler.wfile.flush()
        except OSError:
            pass

    limits = OutboundLimits(read_seconds=0.5, total_seconds=1.0)
    try:
        with serve(silent) as slow, serve(drip) as dripping:
            with outbound_client(policy=policy("127.0.0.1"), limits=limits) as client:
                started = time.monotonic()
                # The SDKs ask for 60 s: the transport's bound wins.
                with pytest.raises(httpx2.ReadTimeout):
                    client.get(slow.url, timeout=60)
                assert time.monotonic() - started < 3
                started = time.monotonic()
                with pytest.raises(OutboundLimitExceeded) as too_slow:
                    client.get(dripping.url, timeout=60)
                assert time.monotonic() - started < 3
            release.set()
    finally:
        release.set()
    assert too_slow.value.code == "response_too_slow"


def test_an_unrequested_compressed_answer_is_refused() -> None:
    def gzipped(handler: BaseHTTPRequestHandler, server: Server) -> None:
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    with (
        serve(gzipped) as server,
        outbound_client(policy=policy("127.0.0.1")) as client,
        pytest.raises(OutboundLimitExceeded) as refused,
    ):
        client.get(server.url)
    assert refused.value.code == "compressed_response"
    assert server.received[0]["headers"]["Accept-Encoding"] == "identity"


# --------------------------------------------------------------------------- the allow-list


def test_the_operators_allow_list_admits_exactly_what_it_names() -> None:
    resolver = Resolver({"ollama.internal": [["127.0.0.1"]], "other.internal": [["127.0.0.1"]]})
    with serve() as model_server, serve() as database:
        by_port = policy(f"127.0.0.1:{model_server.port}", resolver=resolver)
        with outbound_client(policy=by_port) as client:
            assert client.get(f"{model_server.url}/v1/models").status_code == 200
            assert client.get(f"http://[::ffff:127.0.0.1]:{model_server.port}/").is_success
            with pytest.raises(OutboundRefused):
                client.get(database.url)  # same address, another port
        by_name = policy(f"ollama.internal:{model_server.port}", resolver=resolver)
        with outbound_client(policy=by_name) as client:
            assert client.get(f"http://ollama.internal:{model_server.port}/").is_success
            with pytest.raises(OutboundRefused):
                client.get(f"http://other.internal:{model_server.port}/")
            with pytest.raises(OutboundRefused):
                client.get(f"{model_server.url}/")  # the name is allowed, not its address
        by_network = policy("127.0.0.0/8", resolver=resolver)
        with outbound_client(policy=by_network) as client:
            assert client.get(f"http://localhost:{database.port}/").is_success
    assert len(model_server.received) == 3 and len(database.received) == 1


def test_the_allow_list_is_read_from_the_settings() -> None:
    with serve() as server:
        with outbound_client() as client, pytest.raises(OutboundRefused):
            client.get(server.url)
        allowed = override_settings(OUTBOUND_ALLOWED_NETWORKS=[f"127.0.0.1:{server.port}"])
        with allowed, outbound_client() as client:
            assert client.get(server.url).status_code == 200
    assert len(server.received) == 1


def test_allow_list_entries_parse_and_a_bad_one_stops_startup() -> None:
    assert parse_allowed_destinations(
        ["10.0.0.0/8", "192.168.1.20:11434", "fd00::/8", "[fd00::5]:8000", "Ollama.:11434", ""]
    ) == (
        AllowedDestination(network=parse_allowed_destinations(["10.0.0.0/8"])[0].network),
        AllowedDestination(
            network=parse_allowed_destinations(["192.168.1.20"])[0].network, port=11434
        ),
        AllowedDestination(network=parse_allowed_destinations(["fd00::/8"])[0].network),
        AllowedDestination(network=parse_allowed_destinations(["fd00::5"])[0].network, port=8000),
        AllowedDestination(host="ollama", port=11434),
    )
    for bad in ("10.0.0.0/33", "ollama:http", "host:70000", "[fd00::5", "a b", "http://x"):
        with pytest.raises(ImproperlyConfigured, match="OUTBOUND_ALLOWED_NETWORKS"):
            parse_allowed_destinations([bad])
    result = load_settings(OUTBOUND_ALLOWED_NETWORKS="10.0.0.0/8,not a network")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "OUTBOUND_ALLOWED_NETWORKS: 'not a network' is not a network" in result.stderr
    retired = load_settings(AGENT_HTTP_ALLOW_PRIVATE="1")
    assert retired.returncode != 0
    assert "OUTBOUND_ALLOWED_NETWORKS" in retired.stderr


def test_only_http_and_web_or_unprivileged_ports_are_called() -> None:
    resolver = Resolver({"shop.example": [["93.184.216.34"]]})
    rules = policy(resolver=resolver)
    for url in ("ftp://shop.example/", "gopher://shop.example/", "file:///etc/passwd"):
        with pytest.raises(OutboundRefused) as refused:
            check_url(url, policy=rules)
        assert refused.value.code in ("scheme_not_allowed", "invalid_url")
    for port in (22, 25, 111, 445, 0):
        with pytest.raises(OutboundRefused) as refused:
            check_url(f"http://shop.example:{port}/", policy=rules)
        assert refused.value.code == "port_not_allowed"
    for url in ("https://shop.example/", "http://shop.example/", "https://shop.example:8443/"):
        check_url(url, policy=rules)
    # A name that does not resolve yet may be saved: every call checks it again.
    check_url("https://not-yet.example/v1", policy=rules)
    with outbound_client(policy=rules) as client, pytest.raises(OutboundRefused):
        client.get("ftp://shop.example/")


def test_the_async_client_is_pinned_and_refuses_the_same_way() -> None:
    async def calls(server: Server, rebound: Server) -> tuple[int, str]:
        resolver = Resolver({"rebind.example": [["127.0.0.2"], ["127.0.0.1"]]})
        rules = policy("127.0.0.2", resolver=resolver)
        async with async_outbound_client(policy=rules) as client:
            response = await client.get(f"http://rebind.example:{server.port}/")
        async with async_outbound_client(policy=rules) as client:
            try:
                await client.get(f"http://rebind.example:{server.port}/")
            except OutboundRefused as refused:
                return response.status_code, refused.code
        return response.status_code, "not refused"

    with twin_servers() as (vetted, rebound):
        assert asyncio.run(calls(vetted, rebound)) == (200, "private_address")
        assert len(vetted.received) == 1 and rebound.received == []


def test_the_anthropic_model_goes_through_the_outbound_client() -> None:
    with serve() as server:
        model = OutboundChatAnthropic(  # type: ignore[call-arg]
            model="claude-sonnet-4-5",
            api_key=SecretStr(KEY),
            anthropic_api_url=server.url,
            max_retries=0,
        )
        with pytest.raises(Exception) as failed:
            model.invoke([HumanMessage(content="hello")])
    refused = outbound_error_in(failed.value)
    assert refused is not None and refused.code == "private_address"
    assert server.received == []


# --------------------------------------------------------------------------- a tenant's calls


@pytest.fixture
def world(acme: World) -> World:  # noqa: F811 (tests.test_agents' committed tenant)
    # The HTTP tool is a Pro tool, and a self-hosted (OpenAI-compatible) model is in no plan:
    # Pro and the operator's override let the tenant's admins set up both (the plan is a
    # ceiling, agents.entitlements), so what these tests see is the outbound guard alone.
    set_plan(acme.tenant, Tenant.Plan.PRO)
    grant_override(
        staff=UserFactory.create(username="sam@platform.test", tenant=None, is_staff=True),
        tenant=acme.tenant,
        kind="model",
        name="self-hosted",
        provider="openai_compatible",
        reason="Ticket 12: the customer runs its own model server",
    )
    return acme


def test_an_admin_cannot_save_a_private_model_or_endpoint_address(world: World) -> None:
    owner = logged_in(world.owner)

    def grant(kind: str, name: str, config: dict[str, Any]) -> Any:
        return owner.post(
            ENTITLEMENTS,
            {"kind": kind, "name": name, "config": config},
            content_type="application/json",
        )

    for base_url in (
        "http://127.0.0.1:11434/v1",
        "http://2130706433:11434/v1",
        "http://[::ffff:10.0.0.7]:8000/v1",
        "http://localhost.:11434/v1",
    ):
        refused = grant("model", "house", {"provider": "openai_compatible", "base_url": base_url})
        assert refused.status_code == 400, refused.content
        body = refused.json()
        assert body["code"] == "private_address"
        assert body["message"].endswith(NOT_PRIVATE)
        assert body["fields"] == {"config": [body["message"]]}
    metadata = grant("tool", "http_request", {"url": "http://169.254.169.254/latest/meta-data/"})
    assert (metadata.status_code, metadata.json()["code"]) == (400, "private_address")
    port = grant("tool", "http_request", {"url": "https://crm.example.com:22/"})
    assert (port.status_code, port.json()["code"]) == (400, "port_not_allowed")
    with tenant_context(world.tenant):
        assert not TenantEntitlement.objects.exists()

    # The dashboard's form says the same, and saves nothing.
    page = owner.post(
        reverse("app-tools-change", args=["model"]),
        {
            "name": "house",
            "provider": "openai_compatible",
            "model": "llama3",
            "base_url": "http://0x7f.1:11434/v1",
        },
    )
    assert page.status_code == 400
    assert "0x7f.1 is not a public address (loopback)." in page.content.decode()
    with tenant_context(world.tenant):
        assert not TenantEntitlement.objects.exists()

    # A public name (not resolvable here) is saved; the operator's allow-list admits its
    # self-hosted server; changing a saved address to a private one is refused.
    cloud = {"provider": "openai_compatible", "base_url": "https://llm.example.com/v1"}
    public = grant("model", "cloud", cloud)
    assert public.status_code == 201, public.content
    with override_settings(OUTBOUND_ALLOWED_NETWORKS=["127.0.0.1:11434"]):
        ollama = {"provider": "openai_compatible", "base_url": "http://127.0.0.1:11434/v1"}
        local = grant("model", "local", ollama)
    assert local.status_code == 201, local.content
    changed = owner.patch(
        f"{ENTITLEMENTS}{public.json()['id']}/",
        {"config": {"provider": "openai_compatible", "base_url": "http://10.0.0.8/v1"}},
        content_type="application/json",
    )
    assert (changed.status_code, changed.json()["code"]) == (400, "private_address")
    with tenant_context(world.tenant):
        saved = dict(TenantEntitlement.objects.values_list("name", "config__base_url"))
    assert saved == {"cloud": "https://llm.example.com/v1", "local": "http://127.0.0.1:11434/v1"}


def connect_model(world: World, base_url: str) -> None:
    """A model on `base_url` (saved before it was refused, or its DNS changed since) with the
    tenant's key, the tenant's default."""
    with tenant_context(world.tenant):
        create_credential(
            acting_user=world.owner, name="local-llm", kind="openai_compatible", secret=KEY
        )
        TenantEntitlement.objects.create(
            kind="model",
            name="llama3",
            config={
                "provider": "openai_compatible",
                "model": "llama3",
                "base_url": base_url,
                "credential": "local-llm",
                "default": True,
            },
        )
        TenantEntitlement.objects.create(kind="model", name="offline-extractive", effect="revoke")


def test_a_model_on_a_private_address_fails_the_run_and_no_key_leaves(world: World) -> None:
    with serve() as model_server:
        connect_model(world, f"http://127.0.0.1:{model_server.port}/v1")
        run_id, _ = ask(world, "How should I run my board meeting?")
    assert model_server.received == []  # no request, so no Authorization header, ever
    run = get_run(world, run_id)
    message = f"127.0.0.1 is not a public address (loopback). {NOT_PRIVATE}"
    assert (run.status, run.error) == (AgentRun.Status.FAILED, message)
    assert run.draft_message is None
    [failed] = audit_events(world, "agent.run_failed")
    assert failed.context == {"error": message, "code": "private_address"}
    # The consultant reads why; the client is told her consultant will answer.
    consultant = status_line(run, for_client=False)
    assert consultant is not None and consultant.text == f"The agent run failed ({message})."
    client = status_line(run, for_client=True)
    assert client is not None and client.text.startswith("The assistant could not answer")
    view = logged_in(world.consultant).get(f"/api/v1/agent-runs/{run_id}/").json()
    assert (view["status"], view["error"]) == ("failed", message)
    assert KEY not in json.dumps(view) and KEY not in json.dumps(failed.context)


def test_the_same_model_server_answers_once_the_operator_allows_it(world: World) -> None:
    def completion(handler: BaseHTTPRequestHandler, server: Server) -> None:
        body = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "llama3",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "Decide, then discuss."},
                    }
                ],
                "usage": {"prompt_tokens": 50, "completion_tokens": 4, "total_tokens": 54},
            }
        ).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with serve(completion) as model_server:
        connect_model(world, f"http://127.0.0.1:{model_server.port}/v1")
        with override_settings(OUTBOUND_ALLOWED_NETWORKS=[f"127.0.0.1:{model_server.port}"]):
            run_id, _ = ask(world, "How should I run my board meeting?")
    run = get_run(world, run_id)
    assert run.status == AgentRun.Status.AWAITING_REVIEW, run.error
    assert run.draft_message is not None and run.draft_message.body == "Decide, then discuss."
    [request] = model_server.received
    assert (request["path"], request["headers"]["Authorization"]) == (
        "/v1/chat/completions",
        f"Bearer {KEY}",
    )


def test_provider_embeddings_on_a_private_address_fail_the_document_clearly(world: World) -> None:
    with serve() as embeddings_server:
        with tenant_context(world.tenant):
            create_credential(
                acting_user=world.owner,
                name="openai",
                kind="openai",
                secret=KEY,
                metadata={"base_url": f"http://[::ffff:127.0.0.1]:{embeddings_server.port}/v1"},
            )
            TenantEntitlement.objects.create(
                kind="data_source",
                name="playbook",
                config={"embedder": "openai:text-embedding-3-small"},
            )
        upload = SimpleUploadedFile("method.md", b"# Method\n\nAsk first.", "text/markdown")
        response = logged_in(world.consultant).post("/api/v1/documents/", {"file": upload})
    assert response.status_code == 201, response.content
    with tenant_context(world.tenant):
        document = Document.objects.get(id=response.json()["id"])
    assert document.status == Document.Status.FAILED
    assert document.error == (
        "The embedder openai:text-embedding-3-small could not be called: ::ffff:127.0.0.1 is "
        f"not a public address (loopback). {NOT_PRIVATE}"
    )
    assert embeddings_server.received == []


def test_the_http_tool_refuses_a_private_endpoint_before_its_credential_leaves(
    world: World,
) -> None:
    with serve() as endpoint, tenant_context(world.tenant):
        create_credential(acting_user=world.owner, name="crm", kind="http_bearer", secret=KEY)
        for url in (f"{endpoint.url}/lookup", f"http://0x7f.1:{endpoint.port}/lookup"):
            ctx = ToolContext(config={"url": url, "credential": "crm", "method": "POST"})
            with pytest.raises(ToolError) as refused:
                TOOLS["http_request"].func({"query": "order 42"}, ctx)
            assert str(refused.value).endswith("(loopback). " + NOT_PRIVATE)
        assert endpoint.received == []
        with override_settings(OUTBOUND_ALLOWED_NETWORKS=[f"127.0.0.1:{endpoint.port}"]):
            ctx = ToolContext(config={"url": f"{endpoint.url}/lookup", "credential": "crm"})
            assert TOOLS["http_request"].func({"query": "order 42"}, ctx) == (
                '{"answer": "from 127.0.0.1"}'
            )
    [request] = endpoint.received
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"

    release = threading.Event()

    def silent_for_a_while(handler: BaseHTTPRequestHandler, server: Server) -> None:
        release.wait(10)

    with serve(silent_for_a_while) as silent:
        ctx = ToolContext(config={"url": silent.url, "timeout": 1})
        try:
            with (
                override_settings(OUTBOUND_ALLOWED_NETWORKS=[f"127.0.0.1:{silent.port}"]),
                pytest.raises(ToolError, match="the endpoint did not answer in time"),
            ):
                TOOLS["http_request"].func({"query": "order 42"}, ctx)
        finally:
            release.set()
