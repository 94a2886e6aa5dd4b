"""--tls-ca, --tls-cert, --tls-key and --token (or FMNIST_TOKEN) against one server that wants
all of them: mutual TLS and a bearer token. Each missing piece is one line saying which flag to
give; with all of them the image is classified, by one such server or by a list of two."""

from __future__ import annotations

import pytest

from server.api.security import Security
from tests.client.predict_cli import one_line_error, predict, serving
from tests.server.certs import CertificateAuthority
from tests.serving_fixtures import SAMPLES

TOKEN = "client-test-token-1234"
BAG = str(SAMPLES / "bag.png")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("client-pki")
    ca, clients, stranger = (CertificateAuthority(folder, n) for n in ("ca", "clients", "stranger"))
    return {"ca": ca.pem, "server": ca.issue("server", server=True), "clients": clients.pem,
            "client": clients.issue("alice", server=False), "stranger": stranger.pem}


@pytest.fixture(scope="module")
def security(pki, tmp_path_factory) -> Security:
    tokens = tmp_path_factory.mktemp("client-tokens") / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    return Security(tls_cert=pki["server"].cert, tls_key=pki["server"].key,
                    tls_client_ca=pki["clients"], token_file=tokens)


@pytest.fixture(scope="module")
def secure(models_dir, security) -> str:
    with serving(models_dir, security=security) as srv:
        yield f"127.0.0.1:{srv.port}"


def tls(pki, *, client: bool = True) -> list[str]:
    flags = ["--tls-ca", str(pki["ca"])]
    return flags + (["--tls-cert", str(pki["client"].cert), "--tls-key", str(pki["client"].key)]
                    if client else [])


def test_everything_given_classifies(secure, pki):
    out = predict(BAG, "--model", "lenet_bn", "--server", secure, *tls(pki), "--token", TOKEN)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{BAG}: ") and out.stdout.rstrip().endswith("[lenet_bn v1]")


def test_a_list_of_servers_is_checked_against_its_first_address(models_dir, security, secure,
                                                                pki):
    """gRPC would check the certificates against the whole list ("a:1,b:2") as one name."""
    with serving(models_dir, security=security) as other:
        servers = f"{secure},127.0.0.1:{other.port}"
        out = predict(BAG, "--model", "lenet_bn", "--server", servers, *tls(pki),
                      "--token", TOKEN)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().endswith("[lenet_bn v1]")


def test_the_token_can_come_from_fmnist_token(secure, pki):
    out = predict(BAG, "--server", secure, *tls(pki), env={"FMNIST_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr
    one_line_error(predict(BAG, "--server", secure, *tls(pki), env={"FMNIST_TOKEN": "wrong"}),
                   1, "UNAUTHENTICATED")


def test_no_token_says_give_one(secure, pki):
    one_line_error(predict(BAG, "--server", secure, *tls(pki), env={"FMNIST_TOKEN": ""}), 1,
                   "UNAUTHENTICATED", "--token or the FMNIST_TOKEN")
    one_line_error(predict(BAG, "--server", secure, *tls(pki), "--token", "wrong"), 1,
                   "UNAUTHENTICATED")


def test_no_client_certificate_says_give_one(secure, pki):
    one_line_error(predict(BAG, "--server", secure, *tls(pki, client=False), "--token", TOKEN),
                   1, "requires a client certificate (--tls-cert/--tls-key)")


def test_plaintext_to_a_tls_server_says_give_tls_ca(secure):
    one_line_error(predict(BAG, "--server", secure, "--token", TOKEN), 1,
                   "if it serves TLS, give --tls-ca")


def test_a_foreign_ca_is_named(secure, pki):
    one_line_error(predict(BAG, "--server", secure, "--tls-ca", str(pki["stranger"]),
                           "--token", TOKEN), 1, "not signed by the --tls-ca")


def test_certificate_flags_that_do_not_go_together(pki):
    cert, key = str(pki["client"].cert), str(pki["client"].key)
    one_line_error(predict(BAG, "--tls-cert", cert, "--tls-key", key), 2, "need --tls-ca")
    one_line_error(predict(BAG, "--tls-ca", str(pki["ca"]), "--tls-cert", cert), 2,
                   "--tls-cert and --tls-key go together")
    one_line_error(predict(BAG, "--tls-ca", str(pki["ca"]) + ".missing"), 2,
                   "--tls-ca", "cannot read it")


def test_https_before_the_address_is_tls_and_http_is_plaintext(secure, pki):
    out = predict(BAG, "--server", f"https://{secure}", *tls(pki), "--token", TOKEN)
    assert out.returncode == 0, out.stderr
    one_line_error(predict(BAG, "--server", f"http://{secure}", *tls(pki), "--token", TOKEN), 2,
                   "http:// means plaintext but --tls-ca asks for TLS")
