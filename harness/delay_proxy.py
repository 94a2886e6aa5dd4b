"""A slow link for one replica: a TCP proxy in its namespace that holds every byte from the
client for `--delay-ms` before passing it on (what `tc qdisc add dev <veth> root netem delay
200ms` does to the packets towards the replica; this machine's kernel has no netem: `tc` says
"Specified qdisc kind is unknown", only pfifo, tbf and htb exist). Bytes back to the client pass
at once. Bounded: it exits after `--max-seconds`, or on SIGTERM.

    python -m harness.delay_proxy --listen 10.203.0.13:50052 --to 10.203.0.13:50051 --delay-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys

from harness import REPO


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="HOST:PORT to accept clients on")
    p.add_argument("--to", required=True, help="HOST:PORT of the server behind it")
    p.add_argument("--delay-ms", type=float, default=200.0,
                   help="how long each byte from a client is held")
    p.add_argument("--max-seconds", type=float, default=600.0, help="exit after this long")
    return p


async def _pump(reader, writer, delay: float) -> None:
    """Copy until EOF, each chunk written `delay` seconds after it was read (order kept)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def read() -> None:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
        queue.put_nowait((loop.time() + delay, b""))

    async def write() -> None:
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - loop.time()))  # the delay itself
            if not data:
                break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    try:
        await asyncio.gather(read(), write())
    except (ConnectionError, OSError):
        writer.close()


async def _serve(args: argparse.Namespace) -> None:
    host, port = args.to.rsplit(":", 1)

    async def connection(client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(_pump(client_reader, server_writer, args.delay_ms / 1000),
                                 _pump(server_reader, client_writer, 0.0))
        except asyncio.CancelledError:  # the proxy is stopping: the connection ends with it
            pass
        for writer in (client_writer, server_writer):
            writer.close()

    listen_host, listen_port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(connection, listen_host, int(listen_port))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"delay proxy listening on {args.listen}", flush=True)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.max_seconds)


def main(args: argparse.Namespace) -> int:
    asyncio.run(_serve(args))
    return 0


class DelayProxy:
    """The proxy as a process (in a namespace, with `prefix`), started and stopped by a test."""

    def __init__(self, prefix: tuple[str, ...], listen: str, to: str, delay_ms: float):
        self.listen = listen
        self._command = [*prefix, sys.executable, "-m", "harness.delay_proxy", "--listen", listen,
                         "--to", to, "--delay-ms", str(delay_ms), "--max-seconds", "600"]
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "DelayProxy":
        self._proc = subprocess.Popen(self._command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline()  # its first line, or "" if it exits first
        if "listening" not in line:
            self.__exit__()
            raise RuntimeError(f"the delay proxy did not start: {line!r}")
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
