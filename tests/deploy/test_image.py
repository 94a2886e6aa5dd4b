"""deploy/Dockerfile: a serving-only image (no torch) that copies every module the server
imports, exposes the ports its command line listens on, and runs as the non-root user the
manifests ask for. It cannot be built here (no container runtime): its command line runs in
test_command_lines.py instead."""

from __future__ import annotations

import re
import subprocess
import sys

from server.cli import get_args_parser
from tests.deploy.manifests import DOCKERFILE, REPO, dockerfile_cmd, find, served


def test_the_serving_image_needs_no_torch():
    text = DOCKERFILE.read_text()
    assert "requirements/serve.txt" in text and "train.txt" not in text
    packages = [line.split("#")[0].strip() for line in
                (REPO / "requirements" / "serve.txt").read_text().splitlines()]
    assert packages and not any(p.lower().startswith("torch") for p in packages)
    blocked = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
               "import server.app, server.cli, client.predict")
    out = subprocess.run([sys.executable, "-c", blocked], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_image_copies_every_top_level_module_the_server_imports():
    text = DOCKERFILE.read_text()
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


def test_the_image_exposes_the_ports_its_command_line_listens_on():
    args = get_args_parser().parse_args(dockerfile_cmd())
    (exposed,) = re.findall(r"^EXPOSE (.*)$", DOCKERFILE.read_text(), re.M)
    assert set(exposed.split()) == {str(args.port), str(args.http_port), str(args.metrics_port)}


def test_the_image_runs_as_the_non_root_user_the_manifests_ask_for():
    (user,) = re.findall(r"^USER (\S+)$", DOCKERFILE.read_text(), re.M)
    assert user.isdigit() and int(user) != 0  # numeric: runAsNonRoot can check it
    pod = find("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] and pod["runAsUser"] == int(user)
    for s in served().values():
        context = s.container["securityContext"]
        assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
        assert context.get("runAsUser", int(user)) == int(user)
