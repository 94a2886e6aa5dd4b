"""`make attack`: every hostile request of scripts/attacks/catalog.py, one after another, at full
size, against a real `python -m server`, and a table of what each cost it.

    python scripts/attack.py                                   # trains lenet_bn and lenet first (~1 min)
    python scripts/attack.py --models-dir artifacts/models     # serve these instead
    python scripts/attack.py --small --attack br-bomb --attack json-outputs
    python scripts/attack.py --docs docs/security.md           # the table into the page too

A row: the answer (HTTP status or gRPC code), the reply's size, the slowest health answer over
gRPC and HTTP while the attack ran (probed every 50 ms on connections opened before it), the
server's RSS and open file descriptors before and after, the log lines it caused. Exit 0 when
every attack met its bounds (scripts/attacks/run.py), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import secrets
import sys
import tempfile
from pathlib import Path

from bench.results import cpu_info
from harness.models import build_small_models
from harness.process import ServerProcess
from scripts.attacks import run as attack_run
from scripts.attacks.catalog import ATTACKS, BY_NAME, Target

_BEGIN, _END = "<!-- attack table: begin -->", "<!-- attack table: end -->"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", type=Path,
                   help="serve these models (default: train and export lenet_bn and lenet on a "
                        "small synthetic data set first)")
    p.add_argument("--attack", action="append", choices=sorted(BY_NAME), metavar="NAME",
                   help="run only this attack (repeatable; default: all of them)")
    p.add_argument("--small", action="store_true",
                   help="the sizes `make test` uses, not the full ones")
    p.add_argument("--docs", type=Path, metavar="MD",
                   help=f"also write the table into this page, between {_BEGIN} and {_END}")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `python -m server` (repeatable)")
    return p


def main(args: argparse.Namespace) -> int:
    attacks = [BY_NAME[name] for name in args.attack] if args.attack else list(ATTACKS)
    with tempfile.TemporaryDirectory(prefix="attack-") as work:
        models = args.models_dir or build_small_models(Path(work))
        token = secrets.token_hex(16)
        (Path(work) / "tokens").write_text(token + "\n")
        with ServerProcess("--models-dir", str(models), "--device", "cpu", "--port", "0",
                           "--auth-token-file", str(Path(work) / "tokens"), *args.server_arg,
                           http=True, metrics=True) as server:
            port = server.wait_for_port()
            target = Target("127.0.0.1", port, server.http_port, model=_a_model(models),
                            token=token, max_connections=_cap(server),
                            fds=lambda: server.usage().fds)
            outcomes = []
            for attack in attacks:
                outcome = attack_run.run(server, target, attack, full=not args.small)
                outcomes.append(outcome)
                print(_row(outcome), flush=True)
    table = _table(outcomes, not args.small, target)
    print("\n" + table)
    if args.docs:
        _write_docs(args.docs, table)
    failed = [o.attack for o in outcomes if o.problems(BY_NAME[o.attack])]
    print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} attacks held"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _a_model(models: Path) -> str:
    names = sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith("."))
    return "lenet_bn" if "lenet_bn" in names else names[0]


def _cap(server: ServerProcess) -> int:
    """The server's cap on connections per port, as it logs it."""
    server.wait_for_log("connections per port")
    line = next(line for line in server.lines if "connections per port" in line)
    return int(re.search(r"at most ([\d,]+) connections", line).group(1).replace(",", ""))


def _row(o: attack_run.Outcome) -> str:
    problems = o.problems(BY_NAME[o.attack])
    return (f"| {o.attack} | {o.answer} | {o.reply_bytes:,} | {o.health_grpc:.3f} | "
            f"{o.health_http:.3f} | {o.rss_before:.0f} -> {o.rss_after:.0f} | "
            f"{o.fds_before} -> {o.fds_after} | {o.log_lines} "
            f"({o.longest_log_line}) | {o.seconds:.1f} | {'; '.join(problems) or 'held'} |")


def _table(outcomes: list[attack_run.Outcome], full: bool, target: Target) -> str:
    header = ("| attack | answer | reply bytes | gRPC health s | HTTP health s | RSS MB | "
              "fds | log lines (longest) | attack s | verdict |\n|" + "---|" * 10)
    rows = [_row(o) for o in outcomes]
    return "\n".join([f"`make attack` ({'full' if full else 'small'} sizes) on {_cpu()}, "
                      f"Python {platform.python_version()}, the server's cap "
                      f"{target.max_connections:,} connections per port:", "", header, *rows])


def _cpu() -> str:
    cpu, isa = cpu_info()
    return f"{cpu} ({os.cpu_count()} cores; {' '.join(isa) or 'no ISA flags read'})"


def _write_docs(path: Path, table: str) -> None:
    text = path.read_text()
    if _BEGIN not in text or _END not in text:
        raise SystemExit(f"{path} has no {_BEGIN} ... {_END} markers for the table")
    head, rest = text.split(_BEGIN, 1)
    path.write_text(head + _BEGIN + "\n" + table + "\n" + _END + rest.split(_END, 1)[1])
    print(f"wrote the table into {path}")


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
