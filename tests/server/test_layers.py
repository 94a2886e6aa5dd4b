"""The server's layers, read from its source: imports point down api -> dataplane -> batching ->
models, never up; no import cycles; grpc and the protocol stubs only in the api layer and the
bootstrap. Within the api layer the protocol adapters are siblings over the dataplane: the gRPC
adapter (api/grpc/) and the HTTP adapter (api/http/) never import each other, neither reaches
below the dataplane (batching, models), and HTTP imports no gRPC or protobuf module. The checker
is tested on small made-up packages too, so that it can be seen to fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.serving_fixtures import REPO

LAYERS = ("api", "dataplane", "batching", "models")  # top to bottom
SHARED = {"errors", "logs", "admission"}  # importable from every layer; they import only each other
BOOTSTRAP = {"__init__", "__main__", "app", "cli", "loop", "metrics", "process", "workers"}
PROTOCOL_PACKAGES = {"grpc", "grpc_health", "grpc_reflection", "fmnist", "inference", "google"}
ADAPTERS = ("grpc", "http")  # server.api.<adapter>: siblings over the dataplane


def modules(package: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package under `package`."""
    root = package.parent
    return {".".join(p.relative_to(root).with_suffix("").parts): p
            for p in sorted(package.rglob("*.py"))}


def imports(path: Path, package: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, also those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            if node.module == package or node.module.startswith(package + "."):
                found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def place(module: str) -> str:
    """"server.api.grpc.kserve" -> "api"; "server.errors" -> "errors"; "server" -> "__init__"."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1] if parts[1] in LAYERS else parts[1].removesuffix(".py")


def adapter(module: str) -> str | None:
    """"server.api.http.v2" -> "http"; None outside the adapters."""
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "api" and parts[2] in ADAPTERS else None


def violations(package_dir: Path) -> list[str]:
    package = package_dir.name
    mods = modules(package_dir)
    problems, graph = [], {}
    for name, path in mods.items():
        here = place(name)
        graph[name] = set()
        for imported, line in imports(path, package):
            top = imported.split(".")[0]
            where = f"{path.relative_to(package_dir.parent)}:{line} imports {imported}"
            if top in PROTOCOL_PACKAGES and here not in ("api", "app", "cli"):
                problems.append(f"{where}: protocol code below the api layer")
            if top in PROTOCOL_PACKAGES and adapter(name) == "http":
                problems.append(f"{where}: the HTTP adapter imports gRPC or protobuf")
            if top != package:
                continue
            target = next((m for m in (imported, imported.rsplit(".", 1)[0]) if m in mods), None)
            if target is None or target == name:
                continue
            graph[name].add(target)
            problems += _direction(here, place(target), where)
            problems += _sibling(name, target, where)
    return problems + _cycles(graph)


def _sibling(name: str, target: str, where: str) -> list[str]:
    """An adapter imports the dataplane (and what is shared), never another adapter nor the
    layers below the dataplane."""
    mine = adapter(name)
    if mine is None:
        return []
    if adapter(target) not in (None, mine):
        return [f"{where}: the {mine} adapter imports the {adapter(target)} adapter"]
    if place(target) in ("batching", "models"):
        return [f"{where}: the {mine} adapter reaches below the dataplane"]
    return []


def _direction(here: str, there: str, where: str) -> list[str]:
    if here in BOOTSTRAP:
        return []
    if there in BOOTSTRAP:
        return [f"{where}: a layer imports the bootstrap"]
    if here in SHARED:
        return [f"{where}: {here} must import nothing of the server"] if there not in SHARED else []
    if there in SHARED:
        return []
    if LAYERS.index(there) < LAYERS.index(here):
        return [f"{where}: {here} imports {there}, a layer above it"]
    return []


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """One line per import cycle found by a depth-first walk."""
    found, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return found


def test_the_server_imports_point_down_without_cycles():
    assert violations(REPO / "server") == []


def test_every_server_module_is_in_a_layer_or_the_bootstrap():
    unplaced = [m for m in modules(REPO / "server")
                if place(m) not in (*LAYERS, *SHARED, *BOOTSTRAP)]
    assert unplaced == []


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "server" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "server"


@pytest.mark.parametrize("files, expected", [
    ({"models/x.py": "from server.dataplane import core\n", "dataplane/core.py": ""},
     "models imports dataplane, a layer above it"),
    ({"batching/b.py": "def f():\n    from server.api import s\n", "api/s.py": ""},
     "batching imports api, a layer above it"),
    ({"dataplane/core.py": "import grpc\n"}, "protocol code below the api layer"),
    ({"models/m.py": "from inference import grpc_service_pb2\n"}, "protocol code below"),
    ({"models/a.py": "from server.models import b\n", "models/b.py": "import server.models.a\n"},
     "import cycle"),
    ({"errors.py": "from server.models import a\n", "models/a.py": ""}, "must import nothing"),
    ({"api/a.py": "from server import app\n", "app.py": ""}, "imports the bootstrap"),
    ({"api/http/v2.py": "from server.api.grpc import kserve\n", "api/grpc/kserve.py": ""},
     "the http adapter imports the grpc adapter"),
    ({"api/grpc/k.py": "from server.api.http.v2 import x\n", "api/http/v2.py": ""},
     "the grpc adapter imports the http adapter"),
    ({"api/http/v2.py": "from inference import grpc_service_pb2\n"},
     "the HTTP adapter imports gRPC or protobuf"),
    ({"api/http/v2.py": "import grpc\n"}, "the HTTP adapter imports gRPC or protobuf"),
    ({"api/grpc/k.py": "from server.batching.batcher import BatchStats\n",
      "batching/batcher.py": ""}, "the grpc adapter reaches below the dataplane"),
])
def test_the_checker_finds_upward_imports_cycles_and_grpc_below_the_api(tmp_path, files, expected):
    problems = violations(write_package(tmp_path, files))
    assert any(expected in p for p in problems), problems


def test_the_checker_accepts_downward_imports(tmp_path):
    package = write_package(tmp_path, {
        "api/a.py": "import grpc\nfrom server.dataplane import core\nfrom server import errors\n",
        "api/grpc/k.py": "import grpc\nfrom server.api import a\nfrom server.dataplane import core\n",
        "api/http/v.py": "from server.api.http import w\nfrom server.dataplane import core\n",
        "api/http/w.py": "",
        "dataplane/core.py": "from server.batching.b import x\nfrom server.models import m\n",
        "batching/b.py": "from server.models.m import y\n", "models/m.py": "", "errors.py": "",
        "app.py": "import grpc\nfrom server.api import a\n"})
    assert violations(package) == []
