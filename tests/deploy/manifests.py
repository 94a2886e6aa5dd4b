"""deploy/ as the tests read it: every YAML document, the containers that run the server (with
the pod settings that govern them), their command lines parsed by the server's own parser, and
Kubernetes quantities as numbers."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from server.cli import get_args_parser

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"


def documents() -> list[tuple[str, dict]]:
    """(path under deploy/, document) for every YAML document in deploy/, in file order."""
    return [(str(path.relative_to(DEPLOY)), doc) for path in sorted(DEPLOY.rglob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def find(kind: str, name: str | None = None) -> dict:
    """The one document of `kind` (and `name`)."""
    found = [doc for _, doc in documents() if doc["kind"] == kind
             and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in deploy/"
    return found[0]


@dataclass(frozen=True)
class Served:
    """A container that runs `python -m server`, and the pod settings around it."""

    where: str  # e.g. "Deployment fmnist-serve"
    container: dict
    termination_grace: int  # the pod's terminationGracePeriodSeconds

    @property
    def args(self) -> argparse.Namespace:
        return get_args_parser().parse_args(self.container["args"])  # exits 2 on a bad flag

    def port(self, port: int | str) -> int:
        """A probe's or Service's port (a number, or a container port's name) as a number."""
        if isinstance(port, int):
            return port
        (number,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == port]
        return number


def served() -> dict[str, Served]:
    """Every container in deploy/ that runs the server: the Deployment's, and the KServe
    ServingRuntime's (whose pod is the InferenceService's predictor that names the runtime)."""
    deployment = find("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    runtime = find("ServingRuntime")
    predictor = find("InferenceService")["spec"]["predictor"]
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    (runtime_container,) = runtime["spec"]["containers"]
    return {s.where: s for s in (
        Served(f"Deployment {deployment['metadata']['name']}", container,
               pod["terminationGracePeriodSeconds"]),
        Served(f"ServingRuntime {runtime['metadata']['name']}", runtime_container,
               predictor["terminationGracePeriodSeconds"]))}


def dockerfile_cmd() -> list[str]:
    """The image's CMD (its ENTRYPOINT must be the server)."""
    text = DOCKERFILE.read_text()
    (entry,) = re.findall(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
    assert json.loads(entry) == ["python", "-m", "server"]
    return json.loads(cmd)


_SUFFIXES = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2 ** 10, "Mi": 2 ** 20,
             "Gi": 2 ** 30, "Ti": 2 ** 40}


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("2", "1500m", "4Gi", 0.8) as a number."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert m and m.group(2) in _SUFFIXES, f"not a quantity: {value!r}"
    return float(m.group(1)) * _SUFFIXES[m.group(2)]
