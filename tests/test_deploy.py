"""deploy/: the container recipe and the KServe manifest agree with the server's flags and ports,
and their command line does what they promise when it runs.

Neither can be built or applied here (no Docker daemon or cluster in CI), so the container's own
command line is started as a process with its flags as written (only the models folder and the
ports moved to temporary ones): it picks up a new version by polling, answers the readiness
probe's health name only with a model, and refuses to start on an empty models folder. Beside
that: every argument is one the server accepts, the ports line up, probes ask for health names
the server registers, the image copies every module the server imports, and it needs no torch.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from server.api.grpc.classifier import SERVICE_NAME
from server.cli import get_args_parser
from harness.process import ServerProcess, free_port
from tests.serving_fixtures import models_dir  # noqa: F401 - fixture

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


@pytest.fixture(scope="module")
def predictor() -> dict:
    manifest = yaml.safe_load((DEPLOY / "inferenceservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("serving.kserve.io/v1beta1",
                                                          "InferenceService")
    return manifest


def dockerfile_cmd() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    (entry,) = re.findall(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
    assert json.loads(entry) == ["python", "-m", "server"]
    return json.loads(cmd)


def test_every_argument_is_one_the_server_accepts(predictor):
    container = predictor["spec"]["predictor"]["containers"][0]
    for args in (container["args"], dockerfile_cmd()):
        parsed = get_args_parser().parse_args(args)  # exits 2 on an unknown flag or bad value
        assert parsed.host == "0.0.0.0" and str(parsed.models_dir) == "/mnt/models"


def test_ports_and_probes_line_up(predictor):
    spec = predictor["spec"]["predictor"]
    container = spec["containers"][0]
    args = get_args_parser().parse_args(container["args"])
    (port,) = container["ports"]
    assert port["name"] == "h2c" and port["containerPort"] == args.port  # KServe's gRPC port name
    assert container["readinessProbe"]["grpc"]["port"] == args.port
    assert container["livenessProbe"]["grpc"]["port"] == args.port
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    annotations = predictor["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == args.metrics_port
    assert args.grace < spec["terminationGracePeriodSeconds"]  # the drain ends before SIGKILL
    image = get_args_parser().parse_args(dockerfile_cmd())
    assert (image.port, image.metrics_port) == (args.port, args.metrics_port)
    exposed = re.findall(r"^EXPOSE (.*)$", (DEPLOY / "Dockerfile").read_text(), re.M)[0].split()
    assert {str(args.port), str(args.http_port), str(args.metrics_port)} == set(exposed)


def test_the_serving_image_needs_no_torch():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "requirements/serve.txt" in text and "train.txt" not in text
    packages = [line.split("#")[0].strip() for line in
                (REPO / "requirements" / "serve.txt").read_text().splitlines()]
    assert packages and not any(p.lower().startswith("torch") for p in packages)
    blocked = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
               "import server.app, server.cli, client.predict")
    out = subprocess.run([sys.executable, "-c", blocked], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def container_env() -> dict[str, str]:
    """The image's ENV, but for the paths that point into the image."""
    text = (DEPLOY / "Dockerfile").read_text()
    pairs = [p.split("=", 1) for line in re.findall(r"^ENV (.*)$", text, re.M) for p in line.split()]
    return {k: v for k, v in pairs if k != "PYTHONPATH"}


def as_run_here(args: list[str], models: Path) -> tuple[list[str], dict[str, int]]:
    """The container's arguments with the models folder and the ports moved; the rest as written."""
    moved = {"--models-dir": str(models), "--port": str(free_port()),
             "--http-port": str(free_port()), "--metrics-port": str(free_port())}
    out = [moved.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
    return out, {flag: int(port) for flag, port in moved.items() if flag != "--models-dir"}


def health(port: int, service: str) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=30).status


def test_the_image_runs_what_the_manifest_runs(predictor):
    """So that running one of them shows both (the manifest adds only its --grace)."""
    manifest = predictor["spec"]["predictor"]["containers"][0]["args"]
    grace = manifest.index("--grace")
    assert manifest[:grace] + manifest[grace + 2:] == dockerfile_cmd()


@pytest.mark.slow
def test_the_containers_command_line_polls_and_is_ready_only_with_models(predictor, models_dir,  # noqa: F811
                                                                         tmp_path):
    from grpc_health.v1 import health_pb2

    written = predictor["spec"]["predictor"]["containers"][0]["args"]
    poll = float(get_args_parser().parse_args(written).poll_seconds)
    empty = tmp_path / "empty"
    empty.mkdir()
    args, _ = as_run_here(written, empty)
    with ServerProcess(*args, env=container_env()) as server:
        assert server.wait(60) == 1  # no model: never ready, and it says why
    assert "no model in" in server.log
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    args, ports = as_run_here(written, models)
    with ServerProcess(*args, env=container_env()) as server:
        assert server.wait_for_port() == ports["--port"]
        assert health(ports["--port"], SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        ready = f"http://127.0.0.1:{ports['--http-port']}/v2/health/ready"
        with urllib.request.urlopen(ready, timeout=30) as answer:  # the image's HTTP port
            assert answer.status == 200
        shutil.copytree(models / "lenet_bn" / "1", models / "lenet_bn" / "2")
        server.wait_for_log("now serving lenet_bn v2", timeout=poll + 60)
    assert '"level": "ERROR"' not in server.log


def test_the_image_copies_every_top_level_module_the_server_imports():
    text = (DEPLOY / "Dockerfile").read_text()
    copied = {name for line in re.findall(r"^COPY (.*) \S+$", text, re.M) for name in line.split()}
    code = ("import sys; import server.app, server.cli, client.predict; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    ours = {p.stem if p.is_file() else p.name for p in REPO.iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").exists())}
    needed = ours & set(out.stdout.split())
    assert needed and all(any(c.rstrip("/").removesuffix(".py") == m for c in copied)
                          for m in needed), (needed, copied)
