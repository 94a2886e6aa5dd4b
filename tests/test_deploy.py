"""deploy/: the container recipe and the KServe manifest agree with the server's flags and ports.

Neither can be built or applied here (no Docker daemon or cluster in CI); this checks what can
drift: every argument is one the server accepts, the ports line up, probes ask for health names
the server registers, and the serving image needs no torch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from server.cli import get_args_parser
from server.api.classifier import SERVICE_NAME

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
    assert {str(args.port), str(args.metrics_port)} == set(exposed)


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
