"""The README's quick start, run as written, so the README cannot drift from the code.

Every fenced block that follows a `<!-- readme-test: shell -->` or `<!-- readme-test: python -->`
comment in README.md is run, in the README's order, against two models trained for a few steps
(tests/serving_fixtures.py): `make serve` as the Makefile runs it (`make -n` prints the command),
each `python client/predict.py ...` line as a subprocess, `make report` on the test's artifacts,
and the Python block (the tritonclient example) as a script. Exit status and the shape of each
output are checked. Only this is substituted: the test's artifacts folder for artifacts/, free
ports for 50051 and 8002, and the interpreter running the tests for the venv's `python`. So a
README command may only name the models the fixture trains (lenet_bn, lenet); a line of a kind
this file does not know how to run fails the test rather than being skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client.predict import get_args_parser
from harness.process import ServerProcess, free_port, scrape
from tests.serving_fixtures import ARCHS, REPO, SAMPLES, models_dir  # noqa: F401 (a fixture)

README = REPO / "README.md"
MARKED = re.compile(r"^<!-- readme-test: (shell|python) -->\n```\w*\n(.*?)^```", re.M | re.S)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
LABELS = {entry["label"] for entry in json.loads((SAMPLES / "index.json").read_text()).values()}
README_ADDRESS = "127.0.0.1:50051"


def top1_line(file: str) -> re.Pattern:
    """predict.py's top-1 line for `file`: `<file>: <label> (<percent>)  [<model> v<version>]`."""
    return re.compile(rf"{re.escape(file)}:\s+(?P<label>.+) \(\d+\.\d%\)  "
                      rf"\[(?P<model>\S+) v(?P<version>\d+)\]")


def steps(text: str) -> list[tuple[str, object]]:
    """The marked blocks as steps in README order: ("shell", argv) per command line, ("python",
    source) per Python block."""
    found = []
    for kind, body in MARKED.findall(text):
        if kind == "python":
            found.append(("python", body))
            continue
        found += [("shell", argv) for line in body.splitlines()
                  if (argv := shlex.split(line, comments=True))]
    return found


def kind_of(argv: list[str]) -> str:
    """Which of the commands this file knows how to run `argv` is."""
    if argv == [".", ".venv/bin/activate"]:
        return "activate"
    if argv[:2] in (["make", "serve"], ["make", "report"]):
        return argv[1]
    if argv[:2] == ["python", "client/predict.py"]:
        return "client"
    if argv[:1] == ["curl"] and any(a.startswith(README_HTTP) for a in argv):
        return "curl"
    raise AssertionError(f"README command {shlex.join(argv)!r} is of a kind tests/test_readme.py "
                         "cannot run: teach it to, or leave the line out of the marked blocks")


README_HTTP = "http://127.0.0.1:8000/"  # the address the README's curl lines name


def make_command(target: str, variables: list[str], **overrides: str) -> list[str]:
    """The Python command line `make <target>` runs (from `make -n`), the venv's interpreter
    replaced by this one. `variables` are the README's own `VAR=value` words."""
    assignments = [*variables, *(f"{k}={v}" for k, v in overrides.items())]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(["make", "-n", "--no-print-directory", target, *assignments], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    module = {"serve": "server", "report": "reporting"}[target]
    lines = [shlex.split(line) for line in out.stdout.replace("\\\n", " ").splitlines()
             if f" -m {module}" in line]
    assert len(lines) == 1, f"make -n {target} runs no single `-m {module}`:\n{out.stdout}"
    python, *rest = lines[0]
    assert Path(python).name.startswith("python") and rest[:2] == ["-m", module], lines[0]
    return [sys.executable, *rest]


def without_option(argv: list[str], option: str) -> list[str]:
    """`argv` with `option VALUE` left out (the test sets that one itself)."""
    if option not in argv:
        return argv
    i = argv.index(option)
    return argv[:i] + argv[i + 2:]


def expected_images(paths: list[str]) -> list[str]:
    """The image files a list of predict.py inputs stands for: files as given, folders as the
    image files directly inside them, sorted (predict.py --help)."""
    files = []
    for name in paths:
        path = REPO / name
        if path.is_dir():
            files += sorted(str(Path(name) / p.name) for p in path.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(name)
    return files


@dataclass
class Session:
    """What the quick start has started so far, and the names the served models have."""

    artifacts: Path
    data_dir: Path
    served: set[str]
    stack: ExitStack
    server: ServerProcess | None = None
    port: int = 0
    http_port: int = 0
    classified: dict[str, int] = field(default_factory=lambda: {"fmnist.v1": 0, "v2": 0,
                                                                 "http": 0})


def run_serve(session: Session, argv: list[str]) -> None:
    """`make serve` as the Makefile runs it, on the test's artifacts and a free port."""
    port, session.http_port = free_port(), free_port()
    command = make_command("serve", argv[2:], ARTIFACTS=str(session.artifacts), PORT=str(port),
                           HTTP_PORT=str(session.http_port))
    args = without_option(command[3:], "--metrics-port")  # ServerProcess picks a free one
    session.server = session.stack.enter_context(ServerProcess(*args, metrics=True))
    session.port = session.server.wait_for_port()
    assert session.port == port, session.server.log
    assert f"listening on 127.0.0.1:{port} (health SERVING) with {len(session.served)} model(s)" \
        in session.server.log


def run_client(session: Session, argv: list[str]) -> None:
    """One `python client/predict.py ...` line, pointed at the test's server."""
    assert session.server is not None, f"{shlex.join(argv)} comes before `make serve`"
    args = without_option(argv[2:], "--server") + ["--server", f"127.0.0.1:{session.port}"]
    out = subprocess.run([sys.executable, "client/predict.py", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{shlex.join(argv)} exited {out.returncode}:\n{out.stderr}"
    parsed = get_args_parser().parse_args(args)
    if parsed.list:
        check_listing(out.stdout, session.served)
        return
    files = expected_images(parsed.images)
    model = parsed.model or ".+"
    if parsed.json:
        check_json(out.stdout, files, parsed.top_k)
    elif parsed.top_k == 1:
        check_top1(out.stdout, files, model)
    else:
        check_top_k(out.stdout, files, parsed.top_k, model)
    session.classified["fmnist.v1"] += 1


def run_curl(session: Session, argv: list[str]) -> None:
    """A `curl` line against the README's HTTP address, sent to the test's server: it must
    answer the Classify result as JSON (the curl of a person reading it)."""
    assert session.server is not None, f"{shlex.join(argv)} comes before `make serve`"
    here = f"http://127.0.0.1:{session.http_port}/"
    args = [a.replace(README_HTTP, here) for a in argv[1:]]
    out = subprocess.run(["curl", "--silent", "--show-error", "--fail-with-body", *args],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{shlex.join(argv)} exited {out.returncode}:\n{out.stdout}{out.stderr}"
    answer = json.loads(out.stdout)
    url = next(a for a in argv if a.startswith(README_HTTP))
    top_k = int(re.search(r"top_k=(\d+)", url).group(1)) if "top_k=" in url else 1
    assert answer["model"] in session.served and answer["version"] >= 1, answer
    [classification] = answer["classifications"]
    assert len(classification["predictions"]) == top_k, answer
    session.classified["http"] += 1


def check_listing(stdout: str, served: set[str]) -> None:
    header, rule, *rows = stdout.strip().splitlines()
    assert header.split()[:2] == ["model", "version"] and set(rule) <= {"-", " "}, stdout
    assert {row.split()[0] for row in rows} == served, stdout


def check_top1(stdout: str, files: list[str], model: str) -> None:
    lines = stdout.strip().splitlines()
    assert len(lines) == len(files), stdout
    for file, line in zip(files, lines):
        match = top1_line(file).fullmatch(line)
        assert match and match["label"].strip() in LABELS, line
        assert re.fullmatch(model, match["model"]), line


def check_top_k(stdout: str, files: list[str], k: int, model: str) -> None:
    """Per image a `<file>  [<model> v<version>]` line over a table of k classes, best first."""
    lines = stdout.strip().splitlines()
    per_image = 3 + k  # the file's line, the table's header and rule, k rows
    assert len(lines) == per_image * len(files), stdout
    for i, file in enumerate(files):
        head, _, _, *rows = lines[i * per_image:(i + 1) * per_image]
        assert re.fullmatch(rf"{re.escape(file)}  \[{model} v\d+\]", head), head
        labels = [row.rsplit(maxsplit=2)[0].strip() for row in rows]
        probabilities = [float(row.split()[-1]) for row in rows]
        assert set(labels) <= LABELS and len(set(labels)) == k, rows
        assert probabilities == sorted(probabilities, reverse=True), rows


def check_json(stdout: str, files: list[str], k: int) -> None:
    answer = json.loads(stdout)
    assert [r["file"] for r in answer["results"]] == files and answer["errors"] == [], answer
    assert all(len(r["predictions"]) == k for r in answer["results"]), answer


def run_python(session: Session, source: str, tmp_path: Path) -> None:
    """The README's Python block as a script, dialling the test's server."""
    assert session.server is not None, "the Python block comes before `make serve`"
    assert README_ADDRESS in source, f"the Python block does not dial {README_ADDRESS}"
    script = tmp_path / "readme_block.py"
    script.write_text(source.replace(README_ADDRESS, f"127.0.0.1:{session.port}"))
    out = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    classes = re.findall(r"b'(\d+\.\d+):(\d+):([^']+)'", out.stdout)
    [count] = re.findall(r"class_count=(\d+)", source)
    assert len(classes) == int(count), out.stdout
    assert {label for _, _, label in classes} <= LABELS, out.stdout
    values = [float(value) for value, _, _ in classes]
    assert values == sorted(values, reverse=True), out.stdout
    session.classified["v2"] += 1


def run_report(session: Session, argv: list[str]) -> None:
    """`make report` as the Makefile runs it, on the test's artifacts (and their data set)."""
    command = make_command("report", argv[2:], ARTIFACTS=str(session.artifacts))
    env = dict(os.environ, FASHION_MNIST_DIR=str(session.data_dir))
    out = subprocess.run([*command, "--no-progress"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = session.artifacts / "report"
    index = (report / "index.html").read_text()
    for name in session.served:
        assert name in index and (report / f"{name}.html").is_file(), name


def test_the_quick_start_runs_as_written(models_dir, fmnist_dir, tmp_path):  # noqa: F811
    artifacts = tmp_path / "artifacts"
    shutil.copytree(models_dir.parent, artifacts)
    with ExitStack() as stack:
        session = Session(artifacts, fmnist_dir, set(ARCHS), stack)
        for kind, step in steps(README.read_text()):
            if kind == "python":
                run_python(session, step, tmp_path)
            elif (command := kind_of(step)) == "serve":
                run_serve(session, step)
            elif command == "client":
                run_client(session, step)
            elif command == "curl":
                run_curl(session, step)
            elif command == "report":
                run_report(session, step)
        assert session.server is not None, "the quick start never starts the server"
        counted = scrape(session.server.metrics_port).get("fmnist_requests_total", [])
    for protocol, calls in session.classified.items():  # every model and version together
        ok = sum(value for labels, value in counted
                 if (labels["protocol"], labels["code"]) == (protocol, "OK"))
        assert ok >= calls, (protocol, counted)


def test_the_quick_start_covers_what_a_newcomer_does_first():
    """Serve, a file, a folder, --list, the report and the tritonclient example stay marked (and
    so run by the test above); the README stays short and its example output is predict.py's."""
    text = README.read_text()
    found = steps(text)
    commands = [shlex.join(step) for kind, step in found if kind == "shell"]
    assert "make serve" in commands and "make report" in commands, commands
    client = [get_args_parser().parse_args(argv[2:])
              for kind, argv in found if kind == "shell" and kind_of(argv) == "client"]
    inputs = [expected_images(args.images) for args in client]
    assert any(len(files) == 1 for files in inputs), client
    assert any(len(files) > 1 for files in inputs), client
    assert any(args.list for args in client), client
    assert any(kind == "python" and "tritonclient" in step for kind, step in found)
    assert any(kind == "shell" and kind_of(argv) == "curl" for kind, argv in found)
    assert len(text.splitlines()) <= 200
    [(line, file)] = re.findall(r"e\.g\. `((samples/\S+?):[^`]+)`", text)
    assert top1_line(file).fullmatch(line), line


@pytest.mark.parametrize("line", ["curl http://example.com/v2", "python -m server --port 1"])
def test_a_marked_line_of_an_unknown_kind_fails_rather_than_being_skipped(line):
    text = f"<!-- readme-test: shell -->\n```sh\n{line}\n```\n"
    [(kind, argv)] = steps(text)
    with pytest.raises(AssertionError, match="cannot run"):
        kind_of(argv)


def test_every_docs_file_the_readme_names_exists():
    named = set(re.findall(r"docs/[\w.-]+\.md", README.read_text()))
    assert named and all((REPO / name).is_file() for name in named), named


FENCED = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (fenced code left out)."""
    found, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", FENCED.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(path: Path) -> list[str]:
    """The relative links of a Markdown file whose file or #anchor does not exist."""
    broken = []
    for target in LINK.findall(FENCED.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        name, _, anchor = target.partition("#")
        linked = (path.parent / name) if name else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            broken.append(target)
    return broken


@pytest.mark.parametrize("path", [README, *sorted((REPO / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(path):
    assert broken_links(path) == [], path.name


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# A title (`make a`)\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#a-title-make-a) [ok](a.md#twice-1) [ok](#here) [ok](https://x.y/z)\n"
                    "# Here\n[no](a.md#b-title) [no](c.md)\n```\n[skipped](d.md)\n```\n")
    assert broken_links(page) == ["a.md#b-title", "c.md"]


NAMED_DOC = re.compile(r"\bdocs/([\w.-]+\.md)(?:#([\w-]+))?")
SOURCE_FOLDERS = ("bench", "client", "deploy", "exporter", "harness", "reporting", "scripts",
                  "server", "tests", "trainer")


def test_every_docs_page_and_anchor_the_code_names_exists():
    """`docs/<page>.md` and `docs/<page>.md#<anchor>` in docstrings, help texts, comments and the
    Makefile name a page (and heading) that exists."""
    sources = [REPO / "Makefile", *REPO.glob("*.py"),
               *(p for folder in SOURCE_FOLDERS for p in (REPO / folder).rglob("*")
                 if p.suffix in (".py", ".yaml", ".txt") or p.name == "Dockerfile")]
    missing = []
    for source in sources:
        for page, anchor in NAMED_DOC.findall(source.read_text()):
            doc = REPO / "docs" / page
            if not doc.is_file() or (anchor and anchor not in anchors(doc.read_text())):
                named = f"docs/{page}#{anchor}" if anchor else f"docs/{page}"
                missing.append(f"{source.relative_to(REPO)}: {named}")
    assert missing == []
