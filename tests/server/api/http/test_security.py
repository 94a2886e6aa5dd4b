"""Who may call over HTTP: the gRPC port's bearer tokens (--auth-token-file) and open services
(health open by default, the page's files always), and TLS with the same certificate flags."""

from __future__ import annotations

import contextlib
import ssl
import urllib.error

import pytest

from harness.wait import until
from server.api.security import Security
from server.api.grpc.transport import Transport
from server.app import create_server
from tests.server.api.http.web import call, sample_png
from tests.server.certs import CertificateAuthority
from tests.server.fakes import fake_model

TOKEN = "s3cret-token"


@contextlib.contextmanager
def serving(security: Security):
    srv, _ = create_server(models=[fake_model()], port=0, http_port=0, security=security)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(0)


@pytest.fixture
def tokens(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(f"# one per line\n{TOKEN}\n")
    return path


def test_closed_routes_need_a_valid_bearer_token(tokens):
    with serving(Security(token_file=tokens)) as srv:
        base = f"http://127.0.0.1:{srv.http_port}"
        for path in ("/v1/models", "/v2", "/v2/models/fake", "/v2/models/stats"):
            missing = call(base + path)
            assert missing.status == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
            assert missing.error == "no `Authorization: Bearer <token>` header"
            wrong = call(base + path, headers={"Authorization": "Bearer guess"})
            assert wrong.status == 401 and wrong.error == "the bearer token is not valid"
            assert call(base + path, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
        refused = call(f"{base}/v1/models/fake:classify", sample_png("coat"))
        assert refused.status == 401
        assert srv.core.in_flight == 0 and call(
            f"{base}/v1/models/fake:classify", sample_png("coat"),
            {"Authorization": f"bearer {TOKEN}"}).status == 200


def test_health_and_the_description_stay_open_the_page_always(tokens):
    with serving(Security(token_file=tokens)) as srv:
        base = f"http://127.0.0.1:{srv.http_port}"
        for path in ("/v2/health/live", "/v2/health/ready", "/openapi.json", "/",
                     "/static/page.js"):
            assert call(base + path).status == 200, path


def test_open_services_empty_closes_health_too(tokens):
    with serving(Security(token_file=tokens, open_services=())) as srv:
        base = f"http://127.0.0.1:{srv.http_port}"
        assert call(f"{base}/v2/health/ready").status == 401
        assert call(f"{base}/openapi.json").status == 401
        assert call(f"{base}/").status == 200  # the page holds no data


def test_open_services_may_name_one_v2_method(tokens):
    security = Security(token_file=tokens,
                        open_services=("/inference.GRPCInferenceService/ServerMetadata",))
    with serving(security) as srv:
        base = f"http://127.0.0.1:{srv.http_port}"
        assert call(f"{base}/v2").status == 200
        assert call(f"{base}/v2/models/fake").status == 401


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, clients = CertificateAuthority(folder, "ca"), CertificateAuthority(folder, "clients")
    return {"ca": ca, "server": ca.issue("server", server=True), "clients": clients,
            "client": clients.issue("alice", server=False)}


def test_tls_with_the_grpc_certificate_flags(pki):
    with serving(Security(pki["server"].cert, pki["server"].key)) as srv:
        trusting = ssl.create_default_context(cafile=pki["ca"].pem)
        answer = call(f"https://127.0.0.1:{srv.http_port}/v2/health/ready", context=trusting)
        assert answer.status == 200
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            call(f"https://127.0.0.1:{srv.http_port}/v2/health/ready",
                 context=ssl.create_default_context())
        with pytest.raises((ConnectionError, OSError)):  # plaintext to a TLS port
            call(f"http://127.0.0.1:{srv.http_port}/v2/health/ready")


def test_failed_handshakes_give_back_their_place_under_the_connection_cap(pki):
    """With --max-connections 5: 20 plaintext clients fail their TLS handshakes one after
    another, and a good one still gets in: a handshake that fails never starts its handler,
    which gives its place back once the handshake's time (the read timeout, 1 s) is up."""
    srv, _ = create_server(models=[fake_model()], port=0, http_port=0,
                           security=Security(pki["server"].cert, pki["server"].key),
                           transport=Transport(max_connections=5,
                                               request_read_timeout_seconds=1.0))
    srv.start()
    try:
        for _ in range(20):
            with pytest.raises((ConnectionError, OSError)):
                call(f"http://127.0.0.1:{srv.http_port}/v2/health/ready")
        until(lambda: srv.http.guard.open == 0, what="the failed handshakes' places back")
        trusting = ssl.create_default_context(cafile=pki["ca"].pem)
        answer = call(f"https://127.0.0.1:{srv.http_port}/v2/health/ready", context=trusting)
        assert answer.status == 200
    finally:
        srv.stop(0)


def test_mutual_tls_needs_a_client_certificate(pki):
    security = Security(pki["server"].cert, pki["server"].key, pki["clients"].pem)
    with serving(security) as srv:
        url = f"https://127.0.0.1:{srv.http_port}/v2/health/ready"
        anonymous = ssl.create_default_context(cafile=pki["ca"].pem)
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            call(url, context=anonymous)
        alice = ssl.create_default_context(cafile=pki["ca"].pem)
        alice.load_cert_chain(pki["client"].cert, pki["client"].key)
        assert call(url, context=alice).status == 200


def test_a_certificate_python_cannot_use_names_the_files(pki, tmp_path):
    """gRPC refuses such a file first when both ports start; the HTTP context says it too."""
    from server.api.http.listener import ssl_context
    from server.errors import StartupError

    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(StartupError, match=f"cannot use --tls-cert {broken} .* for HTTP"):
        ssl_context(Security(broken, pki["server"].key))
