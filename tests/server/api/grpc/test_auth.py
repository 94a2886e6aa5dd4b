"""Bearer tokens on a real loopback server: who gets UNAUTHENTICATED, what stays open, reloading the
token file, constant-time comparison, tokens kept out of logs; and bounded model names."""

from __future__ import annotations

import contextlib
import logging

import grpc
import pytest
from fmnist.v1 import classifier_pb2 as pb
from fmnist.v1 import classifier_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from client import predict
from server.api.security import Security
from server.app import create_server
from server.dataplane import access
from server.dataplane.access import OPEN_SERVICES, TokenFile
from server.errors import StartupError, Unauthenticated
from tests.server.fakes import fake_model

TOKEN = "s3cret-token-AAAA"
OTHER = "other-token-BBBB"


@contextlib.contextmanager
def serving(token_file, open_services=OPEN_SERVICES):
    """A started server with one fake model (health SERVING needs one); auth happens before any
    model is looked up."""
    srv, port = create_server(models=[fake_model("fake")], port=0,
                              security=Security(token_file=token_file, open_services=open_services))
    srv.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, f"127.0.0.1:{port}"
    finally:
        srv.stop(0)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text(f"# the clients\n{TOKEN}\n\n  {OTHER}  \n")
    return path


def bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def list_models(channel, metadata=()):
    return pb_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=10,
                                                      metadata=metadata)


def classify(channel, metadata=(), model="lenet_bn"):
    request = pb.ClassifyRequest(model=model, images=[pb.Image(raw=bytes(784))])
    return pb_grpc.ClassifierStub(channel).Classify(request, timeout=10, metadata=metadata)


def test_calls_without_a_valid_token_are_unauthenticated(token_file, caplog):
    with caplog.at_level(logging.DEBUG), serving(token_file) as (channel, _):
        for metadata in ((), bearer("wrong"), (("authorization", f"Basic {TOKEN}"),),
                         bearer(TOKEN + "x"), bearer(TOKEN[:-1])):
            with pytest.raises(grpc.RpcError) as refused:
                list_models(channel, metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
            assert TOKEN not in refused.value.details()
            assert code_of(lambda: classify(channel, metadata)) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: list_models(channel, bearer(TOKEN))) == grpc.StatusCode.OK
        assert code_of(lambda: list_models(channel, bearer(OTHER))) == grpc.StatusCode.OK
        lowercase = (("authorization", f"bearer {OTHER}"),)
        assert code_of(lambda: list_models(channel, lowercase)) == grpc.StatusCode.OK
        # authenticated, the call reaches the core: no such model
        assert code_of(lambda: classify(channel, bearer(TOKEN))) == grpc.StatusCode.NOT_FOUND
    assert "UNAUTHENTICATED" in caplog.text
    assert TOKEN not in caplog.text and OTHER not in caplog.text and "wrong" not in caplog.text


def test_health_and_reflection_stay_open(token_file):
    with serving(token_file) as (channel, _):
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert "fmnist.v1.Classifier" in names


def test_open_services_are_configurable(token_file):
    with serving(token_file, open_services=()) as (channel, _):
        check = lambda metadata: health_pb2_grpc.HealthStub(channel).Check(  # noqa: E731
            health_pb2.HealthCheckRequest(service=""), timeout=10, metadata=metadata)
        assert code_of(lambda: check(())) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: check(bearer(TOKEN))) == grpc.StatusCode.OK
    with serving(token_file, open_services=("/fmnist.v1.Classifier/ListModels",)) as (channel, _):
        assert code_of(lambda: list_models(channel)) == grpc.StatusCode.OK
        assert code_of(lambda: classify(channel)) == grpc.StatusCode.UNAUTHENTICATED


def test_the_token_file_is_reloaded_when_it_changes(token_file, caplog):
    with serving(token_file) as (channel, _):
        assert code_of(lambda: list_models(channel, bearer(TOKEN))) == grpc.StatusCode.OK
        token_file.write_text("brand-new-token\n")
        assert code_of(lambda: list_models(channel, bearer(TOKEN))) == \
            grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: list_models(channel, bearer("brand-new-token"))) == \
            grpc.StatusCode.OK
        token_file.unlink()  # unreadable: the last good set stays
        with caplog.at_level(logging.WARNING, logger="server.dataplane.access"):
            assert code_of(lambda: list_models(channel, bearer("brand-new-token"))) == \
                grpc.StatusCode.OK
        assert "cannot be read" in caplog.text and "brand-new-token" not in caplog.text


def test_tokens_are_compared_in_constant_time_with_every_token(token_file, monkeypatch):
    """hmac.compare_digest, against every token even after a match (no early exit)."""
    compared = []

    def spy(a, b):
        compared.append(b)
        return a == b

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    policy = access.Access(TokenFile(token_file))
    assert policy.check("/fmnist.v1.Classifier/ListModels", TOKEN.encode())
    assert compared == [TOKEN.encode(), OTHER.encode()]
    with pytest.raises(Unauthenticated):
        policy.check("/fmnist.v1.Classifier/ListModels", b"nope")


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_a_token_file_without_tokens_stops_the_start(tmp_path, text):
    (tmp_path / "t").write_text(text)
    with pytest.raises(StartupError, match="has no tokens"):
        create_server(models=[], port=0, security=Security(token_file=tmp_path / "t"))
    with pytest.raises(StartupError, match="cannot read the token file"):
        create_server(models=[], port=0, security=Security(token_file=tmp_path / "missing"))


def run_client(capsys, address, *args: str) -> tuple[int, str]:
    code = predict.main(predict.get_args_parser().parse_args(
        ["--list", "--server", address, "--timeout", "10", *args]))
    return code, capsys.readouterr().err


def test_the_client_sends_the_token_from_the_flag_or_the_environment(token_file, capsys,
                                                                      monkeypatch):
    monkeypatch.delenv("FMNIST_TOKEN", raising=False)
    with serving(token_file) as (_, address):
        code, err = run_client(capsys, address)
        assert code == 1 and err.count("\n") == 1 and "UNAUTHENTICATED" in err
        assert "--token or the FMNIST_TOKEN" in err
        assert run_client(capsys, address, "--token", TOKEN) == (0, "")
        monkeypatch.setenv("FMNIST_TOKEN", OTHER)
        assert run_client(capsys, address) == (0, "")
        help_text = predict.get_args_parser().format_help()
        assert OTHER not in help_text  # the environment's token is not shown as a default


# --- names from requests are bounded ---------------------------------------------------------

@pytest.fixture(scope="module")
def plain():
    srv, port = create_server(models=[], port=0)
    srv.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    srv.stop(0)


@pytest.mark.parametrize("name, code", [
    ("m" * 128, grpc.StatusCode.NOT_FOUND), ("é" * 64, grpc.StatusCode.NOT_FOUND),  # 128 bytes
    ("m" * 129, grpc.StatusCode.INVALID_ARGUMENT), ("é" * 65, grpc.StatusCode.INVALID_ARGUMENT),
    ("x" * 1_000_000, grpc.StatusCode.INVALID_ARGUMENT)])
def test_model_names_over_128_bytes_are_invalid_and_never_echoed_whole(plain, name, code, caplog):
    with caplog.at_level(logging.DEBUG), pytest.raises(grpc.RpcError) as refused:
        classify(plain, model=name)
    assert refused.value.code() == code
    assert len(refused.value.details()) < 400
    assert name[:100] in refused.value.details() or name[:60] in refused.value.details()
    assert all(len(r.getMessage()) < 1000 for r in caplog.records)


def test_shorten():
    from server.errors import shorten
    assert shorten("lenet") == "'lenet'"
    long = shorten("a" * 10_000, 64)
    assert long.startswith("'" + "a" * 64 + "'...") and "10,000 characters" in long
    assert shorten(b"\xff\n" * 3) == repr("\\xff\n" * 3)


def test_a_long_method_name_is_not_logged_whole(token_file, caplog):
    with caplog.at_level(logging.INFO, logger="server.api.grpc.auth"), serving(token_file) as (channel, _):
        call = channel.unary_unary("/fmnist.v1.Classifier/" + "X" * 5000)
        assert code_of(lambda: call(b"", timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
    assert "X" * 100 not in caplog.text and "UNAUTHENTICATED" in caplog.text
