"""The non-emulator channel: TLS plus Application Default Credentials.

ingest.publish.pubsub.create_channel(endpoint, emulator=None) hands the channel to
google-api-core, which finds ADC and refreshes tokens. The emulator cannot
check any of that, so these tests run the real client code against local
stand-ins for Google's two servers, all on loopback and nothing mocked in
ingest: a TLS gRPC server with a self-signed certificate for "localhost" that
checks the ``authorization`` metadata, and an OAuth token endpoint that the
ADC key file (GOOGLE_APPLICATION_CREDENTIALS) names as its ``token_uri``.

The key file is a ``service_account`` key, not ``authorized_user``: google-auth
(2.63) ignores an authorized_user file's token_uri and always uses
https://oauth2.googleapis.com/token, which a test must never reach. A
service-account key honours token_uri; the token endpoint checks the signed
JWT-bearer assertion against the key's public half.

Every client process runs with LOOPBACK_GUARD installed: a Python-level
getaddrinfo that refuses any name but loopback, so a regression in the
environment set-up fails loudly instead of sending traffic off the box.

gRPC core reads GRPC_DEFAULT_SSL_ROOTS_FILE_PATH once per process (its default
root store is initialised once), and google-auth reads the GCE metadata
variables at import time, so the client side runs in a fresh interpreter with
its environment set up front.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from google.auth import _helpers as auth_helpers
from google.pubsub_v1.types import pubsub as pubsub_types

from ingest.publish.pubsub import PUBSUB_SCOPES
from tests.helpers import REPO
from tools.testing.emulator import free_port

TOPIC = "projects/p/topics/tls"
PUBSUB_SCOPE = PUBSUB_SCOPES[0]
SUBPROCESS_TIMEOUT_S = 60
PublishRequest = pubsub_types.PublishRequest.pb()
PublishResponse = pubsub_types.PublishResponse.pb()
GetTopicRequest = pubsub_types.GetTopicRequest.pb()
Topic = pubsub_types.Topic.pb()

# The client: create_channel as the daemon calls it, then GetTopic and one
# Publish per argv batch, in order. Prints a JSON line with the outcome.
LOOPBACK_GUARD = """
import socket
_getaddrinfo = socket.getaddrinfo
def _loopback_only(host, *args, **kwargs):
    if host not in ("localhost", "127.0.0.1", "::1", b"localhost", b"127.0.0.1"):
        raise OSError(f"test guard: refusing to resolve non-loopback host {host!r}")
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _loopback_only
"""
CLIENT = (
    LOOPBACK_GUARD
    + """
import asyncio, json, sys
import grpc.aio
from ingest.publish.pubsub import PubSubClient, RequestEncoder, create_channel, emulator_host

async def main(endpoint, topic, batches):
    assert emulator_host() is None
    channel = create_channel(endpoint, emulator_host())
    client = PubSubClient(channel, topic)
    try:
        await client.get_topic(5)
        for batch in batches:
            await client.publish(RequestEncoder(topic).encode([m.encode() for m in batch]), 5)
    except grpc.aio.AioRpcError as exc:
        return {"code": exc.code().name, "details": exc.details()}
    finally:
        await client.close()
    return {"code": "OK"}

print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))))
"""
)
SERVE = (
    LOOPBACK_GUARD
    + """
import sys
from ingest.cli import main
raise SystemExit(main(sys.argv[1:]))
"""
)


# ------------------------------------------------------------- certificate
@dataclass(frozen=True)
class Cert:
    cert_pem: bytes
    key_pem: bytes
    path: Path


def self_signed_localhost(directory: Path) -> Cert:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / "localhost.pem"
    path.write_bytes(cert_pem)
    return Cert(cert_pem, key_pem, path)


# ---------------------------------------------------------- token endpoint
@dataclass(frozen=True)
class ServiceAccount:
    email: str
    private_key_pem: str
    public_key: rsa.RSAPublicKey


def service_account() -> ServiceAccount:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return ServiceAccount("ingest@p.iam.gserviceaccount.com", pem, key.public_key())


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class TokenEndpoint:
    """OAuth2 token endpoint on 127.0.0.1 for the JWT-bearer grant: checks the
    assertion's RS256 signature, issuer, audience and scope, then issues tok-1,
    tok-2, ... in turn with the next expires_in from ``lifetimes_s`` (the last
    one repeats). A bad grant gets 400 invalid_grant and no token."""

    def __init__(self, account: ServiceAccount, lifetimes_s: list[int]) -> None:
        self.account = account
        self.lifetimes_s = lifetimes_s
        self.issued: list[str] = []
        self.claims: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                payload = endpoint._grant(self.path, urllib.parse.parse_qs(body.decode()))
                data = json.dumps(payload).encode()
                self.send_response(200 if "access_token" in payload else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="token-endpoint")

    def _grant(self, path: str, form: dict[str, list[str]]) -> dict[str, Any]:
        try:
            assert path == "/token"
            assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
            header, claims, signature = form["assertion"][0].split(".")
            self.account.public_key.verify(
                _b64url(signature),
                f"{header}.{claims}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            decoded = json.loads(_b64url(claims))
            assert decoded["iss"] == self.account.email
            # google-auth always names Google's endpoint as the audience.
            assert decoded["aud"] == "https://oauth2.googleapis.com/token"
            assert PUBSUB_SCOPE in decoded["scope"].split()
        except (AssertionError, KeyError, ValueError, InvalidSignature):
            return {"error": "invalid_grant"}
        with self._lock:
            self.claims.append(decoded)
            n = len(self.issued)
            token = f"tok-{n + 1}"
            self.issued.append(token)
            lifetime = self.lifetimes_s[min(n, len(self.lifetimes_s) - 1)]
        return {"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}

    def valid(self, token: str) -> bool:
        with self._lock:
            return token in self.issued

    def __enter__(self) -> TokenEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)


# ----------------------------------------------------------- TLS Pub/Sub
@dataclass
class Seen:
    method: str
    authorization: str | None
    topic: str
    messages: list[bytes] = field(default_factory=list)


class TlsPubSub:
    """A stand-in for pubsub.googleapis.com: TLS with the self-signed cert;
    Publish and GetTopic answer only a Bearer token the token endpoint issued
    (UNAUTHENTICATED otherwise) and record every call."""

    def __init__(self, cert: Cert, tokens: TokenEndpoint) -> None:
        self.tokens = tokens
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Publisher",
            {
                "Publish": grpc.unary_unary_rpc_method_handler(
                    self._publish,
                    request_deserializer=PublishRequest.FromString,
                    response_serializer=PublishResponse.SerializeToString,
                ),
                "GetTopic": grpc.unary_unary_rpc_method_handler(
                    self._get_topic,
                    request_deserializer=GetTopicRequest.FromString,
                    response_serializer=Topic.SerializeToString,
                ),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        credentials = grpc.ssl_server_credentials([(cert.key_pem, cert.cert_pem)])
        self.port = self.server.add_secure_port("127.0.0.1:0", credentials)

    def _authorize(self, method: str, topic: str, context: grpc.ServicerContext) -> Seen:
        auth = dict(context.invocation_metadata()).get("authorization")
        seen = Seen(method, str(auth) if auth is not None else None, topic)
        with self._lock:
            self.seen.append(seen)
        token = seen.authorization or ""
        if not (token.startswith("Bearer ") and self.tokens.valid(token[len("Bearer ") :])):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing bearer token")
        return seen

    def _publish(self, request: Any, context: grpc.ServicerContext) -> Any:
        seen = self._authorize("Publish", request.topic, context)
        seen.messages = [m.data for m in request.messages]
        return PublishResponse(message_ids=[str(i) for i in range(len(seen.messages))])

    def _get_topic(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._authorize("GetTopic", request.topic, context)
        return Topic(name=request.topic)

    def __enter__(self) -> TlsPubSub:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(None).wait(10)


# ----------------------------------------------------------------- harness
def no_google_env(home: Path) -> dict[str, str]:
    """The environment of a host with no Google setup, which can reach nothing
    but loopback: no gcloud ADC in HOME, no metadata server (it is pointed at a
    closed loopback port and the GCE check is off), no proxies."""
    closed = f"127.0.0.1:{free_port()}"
    drop = {"PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"}
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and "proxy" not in k.lower() and not k.startswith("CLOUDSDK_")
    }
    (home / "gcloud").mkdir(exist_ok=True)
    env.update(
        HOME=str(home),
        CLOUDSDK_CONFIG=str(home / "gcloud"),
        NO_GCE_CHECK="true",  # google-auth compares with the lowercase string
        GCE_METADATA_HOST=closed,
        GCE_METADATA_IP=closed,
        GOOGLE_API_USE_CLIENT_CERTIFICATE="false",
        GOOGLE_SDK_EXPERIMENTAL_PYTHON_REGIONAL_ACCESS_BOUNDARY_LOOKUP_ENABLED="false",
        NO_PROXY="*",
        PYTHONPATH=str(REPO),
    )
    return env


@dataclass
class Rig:
    cert: Cert
    tokens: TokenEndpoint
    pubsub: TlsPubSub
    env: dict[str, str]

    @property
    def endpoint(self) -> str:
        return f"localhost:{self.pubsub.port}"

    def run_client(self, batches: list[list[str]]) -> dict[str, str]:
        proc = subprocess.run(
            [sys.executable, "-c", CLIENT, self.endpoint, TOPIC, json.dumps(batches)],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        result: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result


def rig(tmp_path: Path, lifetimes_s: list[int]) -> Iterator[Rig]:
    cert = self_signed_localhost(tmp_path)
    account = service_account()
    with TokenEndpoint(account, lifetimes_s) as tokens, TlsPubSub(cert, tokens) as pubsub:
        key_file = tmp_path / "key.json"
        key_file.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "p",
                    "private_key_id": "k1",
                    "private_key": account.private_key_pem,
                    "client_email": account.email,
                    "client_id": "1",
                    "token_uri": tokens.url,
                }
            )
        )
        env = no_google_env(tmp_path)
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key_file)
        env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(cert.path)
        yield Rig(cert, tokens, pubsub, env)


@pytest.fixture
def long_lived(tmp_path: Path) -> Iterator[Rig]:
    yield from rig(tmp_path, [3600])


@pytest.fixture
def short_lived_first(tmp_path: Path) -> Iterator[Rig]:
    # google-auth treats a token as expired REFRESH_THRESHOLD before its expiry,
    # so a 60 s token is stale at once and the next call must refresh it.
    assert datetime.timedelta(seconds=60) < auth_helpers.REFRESH_THRESHOLD
    yield from rig(tmp_path, [60, 3600])


# ------------------------------------------------------------------- tests
def test_publish_over_tls_with_adc(long_lived: Rig) -> None:
    batches = [['{"n":1}', '{"n":2}'], ['{"n":3}']]
    assert long_lived.run_client(batches) == {"code": "OK"}
    seen = long_lived.pubsub.seen
    assert [(s.method, s.authorization, s.topic) for s in seen] == [
        ("GetTopic", "Bearer tok-1", TOPIC),
        ("Publish", "Bearer tok-1", TOPIC),
        ("Publish", "Bearer tok-1", TOPIC),
    ]
    assert [s.messages for s in seen[1:]] == [[b'{"n":1}', b'{"n":2}'], [b'{"n":3}']]
    # One token for all three calls: it is cached, not fetched per call.
    assert long_lived.tokens.issued == ["tok-1"]
    assert long_lived.tokens.claims[0]["scope"] == PUBSUB_SCOPE  # create_channel's scopes


def test_token_is_refreshed_before_it_expires(short_lived_first: Rig) -> None:
    batches = [['{"n":1}'], ['{"n":2}']]
    assert short_lived_first.run_client(batches) == {"code": "OK"}
    seen = short_lived_first.pubsub.seen
    assert [(s.method, s.authorization) for s in seen] == [
        ("GetTopic", "Bearer tok-1"),  # 60 s left: already inside the refresh window
        ("Publish", "Bearer tok-2"),  # refreshed; tok-2 lives an hour
        ("Publish", "Bearer tok-2"),
    ]
    assert [s.messages for s in seen[1:]] == [[b'{"n":1}'], [b'{"n":2}']]
    assert short_lived_first.tokens.issued == ["tok-1", "tok-2"]


def test_the_server_certificate_is_verified(long_lived: Rig) -> None:
    """Without the self-signed cert among its roots the client refuses the
    server: the channel really is TLS with verification, not plaintext."""
    long_lived.env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = "/etc/ssl/certs/ca-certificates.crt"
    if not os.path.exists(long_lived.env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"]):
        long_lived.env.pop("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")
    result = long_lived.run_client([['{"n":1}']])
    assert result["code"] == "UNAVAILABLE"
    assert long_lived.pubsub.seen == []


def test_the_stand_in_rejects_a_wrong_token(long_lived: Rig) -> None:
    """The authorization check the tests rely on can fail."""
    credentials = grpc.ssl_channel_credentials(root_certificates=long_lived.cert.cert_pem)
    with grpc.secure_channel(long_lived.endpoint, credentials) as channel:
        get_topic = channel.unary_unary(
            "/google.pubsub.v1.Publisher/GetTopic",
            request_serializer=GetTopicRequest.SerializeToString,
            response_deserializer=Topic.FromString,
        )
        for metadata in ([("authorization", "Bearer tok-1")], []):
            with pytest.raises(grpc.RpcError) as failure:
                get_topic(GetTopicRequest(topic=TOPIC), metadata=metadata, timeout=10)
            assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert len(long_lived.pubsub.seen) == 2


@pytest.mark.parametrize("adc", ["missing-file", "unset"])
def test_serve_without_credentials_exits_2(tmp_path: Path, adc: str) -> None:
    env = no_google_env(tmp_path)
    if adc == "missing-file":
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "no-such-key.json")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SERVE,
            "serve",
            "--project",
            "p",
            "--topic",
            "tt1",
            "--pubsub-endpoint",
            "localhost:1",
            "--unix",
            str(tmp_path / "ingest.sock"),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ingest: error:")]
    assert len(errors) == 1, proc.stderr
    assert "GOOGLE_APPLICATION_CREDENTIALS" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ingest.sock").exists()  # failed before binding anything
