"""TLS and mutual TLS on a real loopback server, with certificates made for the test: the right CA
works, a missing or foreign one is refused, and the client says so in one line."""

from __future__ import annotations

import contextlib
import logging

import grpc
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc

from client import predict
from server.app import create_server
from server.errors import StartupError
from server.api.security import Security, is_loopback
from tests.server.certs import CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A server CA with a server certificate, a client CA with a client certificate, and a
    stranger CA that issued both kinds too (what must be refused)."""
    folder = tmp_path_factory.mktemp("pki")
    ca, clients, stranger = (CertificateAuthority(folder, n) for n in ("ca", "clients", "stranger"))
    return {"ca": ca, "server": ca.issue("server", server=True),
            "clients": clients, "client": clients.issue("alice", server=False),
            "stranger": stranger, "stranger_server": stranger.issue("server", server=True),
            "stranger_client": stranger.issue("mallory", server=False)}


@contextlib.contextmanager
def serving(security: Security):
    """A started server with no models (ListModels still answers): TLS is about the transport."""
    srv, port = create_server(models=[], port=0, security=security)
    srv.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        srv.stop(0)


def run_client(capsys, *args: str) -> tuple[int, str, str]:
    code = predict.main(predict.get_args_parser().parse_args(["--list", "--timeout", "10", *args]))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_client_trusting_the_servers_ca_lists_models(pki, capsys):
    with serving(Security(pki["server"].cert, pki["server"].key)) as address:
        code, out, err = run_client(capsys, "--server", address, "--tls-ca", str(pki["ca"].pem))
    assert (code, err) == (0, "")
    assert "serves no models" in out


def test_a_client_trusting_another_ca_is_refused_in_one_line(pki, capsys):
    with serving(Security(pki["server"].cert, pki["server"].key)) as address:
        code, _, err = run_client(capsys, "--server", address,
                                  "--tls-ca", str(pki["stranger"].pem))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: TLS with ")
    assert "not signed by the --tls-ca" in err


def test_a_plaintext_client_is_refused_by_a_tls_server(pki, capsys):
    with serving(Security(pki["server"].cert, pki["server"].key)) as address:
        code, _, err = run_client(capsys, "--server", address)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: "), err
    assert "if it serves TLS, give --tls-ca" in err


def test_a_tls_client_is_refused_by_a_plaintext_server(pki, capsys):
    with serving(Security()) as address:
        code, _, err = run_client(capsys, "--server", address, "--tls-ca", str(pki["ca"].pem))
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: TLS with "), err


@pytest.fixture(scope="module")
def mutual(pki):
    """A server that requires client certificates signed by the clients' CA."""
    with serving(Security(pki["server"].cert, pki["server"].key,
                          tls_client_ca=pki["clients"].pem)) as address:
        yield address


def test_mutual_tls_accepts_a_client_certificate_from_the_client_ca(pki, mutual, capsys):
    code, out, err = run_client(capsys, "--server", mutual, "--tls-ca", str(pki["ca"].pem),
                                "--tls-cert", str(pki["client"].cert),
                                "--tls-key", str(pki["client"].key))
    assert (code, err) == (0, ""), err


def test_mutual_tls_refuses_a_client_without_a_certificate(pki, mutual, capsys):
    code, _, err = run_client(capsys, "--server", mutual, "--tls-ca", str(pki["ca"].pem))
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: TLS with "), err


def test_mutual_tls_refuses_a_certificate_from_another_ca(pki, mutual, capsys):
    code, _, err = run_client(capsys, "--server", mutual, "--tls-ca", str(pki["ca"].pem),
                              "--tls-cert", str(pki["stranger_client"].cert),
                              "--tls-key", str(pki["stranger_client"].key))
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: TLS with "), err


def test_a_server_certificate_from_another_ca_is_refused_even_with_the_right_name(pki, capsys):
    with serving(Security(pki["stranger_server"].cert, pki["stranger_server"].key)) as address:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(pki["ca"].pem.read_bytes()))
        with channel, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("security, message", [
    (lambda p: Security(tls_cert=p["server"].cert), "--tls-cert and --tls-key go together"),
    (lambda p: Security(tls_client_ca=p["clients"].pem), "--tls-client-ca needs --tls-cert"),
    (lambda p: Security(p["server"].cert, p["server"].cert.with_suffix(".missing")),
     "cannot read the TLS key"),
    (lambda p: Security(p["server"].cert, p["ca"].folder / "nothing.pem"), "cannot read"),
])
def test_inconsistent_or_unreadable_tls_settings_stop_the_start(pki, security, message):
    with pytest.raises(StartupError, match=message):
        create_server(models=[], port=0, security=security(pki))


def test_a_key_that_is_not_pem_stops_the_start(pki, tmp_path):
    (tmp_path / "key.pem").write_text("not a key\n")
    with pytest.raises(StartupError, match="is not PEM"):
        create_server(models=[], port=0,
                      security=Security(pki["server"].cert, tmp_path / "key.pem"))


class _Recorder:
    """Stands in for grpc.aio.Server: records which kind of port was asked for."""

    def __init__(self):
        self.calls = []

    def add_insecure_port(self, address):
        self.calls.append(("insecure", address))
        return 1

    def add_secure_port(self, address, credentials):
        self.calls.append(("secure", address))
        return 1


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("[::1]", False),
                                          ("localhost", False), ("0.0.0.0", True),
                                          ("[::]", True), ("10.1.2.3", True)])
def test_plaintext_off_loopback_logs_a_warning(host, warned, caplog):
    recorder = _Recorder()
    with caplog.at_level(logging.WARNING, logger="server.api.security"):
        Security().add_port(recorder, f"{host}:50051")
    assert recorder.calls == [("insecure", f"{host}:50051")]
    assert ("WITHOUT TLS" in caplog.text) is warned


def test_tls_binds_a_secure_port_without_a_warning(pki, caplog):
    recorder = _Recorder()
    with caplog.at_level(logging.WARNING, logger="server.api.security"):
        Security(pki["server"].cert, pki["server"].key).add_port(recorder, "0.0.0.0:50051")
    assert recorder.calls == [("secure", "0.0.0.0:50051")] and caplog.text == ""


def test_is_loopback():
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
