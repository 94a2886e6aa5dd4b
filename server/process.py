"""Process-wide settings a server wants: more open files and freed memory given back (both once,
in `python -m server`'s main, server/cli.py, before anything is loaded), and the objects of its
start-up kept out of the garbage collector's full passes (once it serves).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import resource

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # bytes: larger blocks are mapped, and unmapped when freed


def raise_file_limit() -> int:
    """Raise the soft limit of open files to the hard one (as servers do: the soft default of
    1,024 is a shell's, not a server's); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("cannot raise the open-file limit from %d to %d", soft, target)
    return soft


def return_freed_memory() -> bool:
    """Keep glibc's threshold for mapping large blocks at 128 KiB. By default glibc raises it to
    the largest block freed so far, after which large blocks come from the heap and stay in the
    process when freed: one KServe v2 message of 1.5 million tiny outputs (15 MB, parsed into
    ~100 MB by protobuf) left the server 100 MB larger for good; with the threshold fixed it
    came back within 4 MB (`make attack`). False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, classes, functions, the sessions' and grpc's Python
    state: ~60,000 with the 8 demo models) out of the collector's reach. They live as long as the
    process, yet each full collection walked them all with the GIL held, stopping the event loop:
    7 full passes of 23-26 ms each in 10 s of 32 callers, which showed as p99 27 ms against a p50
    of 10 (lenet_bn, fmnist.v1, one worker). Afterwards a full pass walks only what was made
    since. Garbage is collected first, so none of it is kept for good; what is frozen is never
    collected as a cycle, so a version unloaded later lets go of its session itself
    (OnnxRunner.close), not through the collector."""
    gc.collect()
    gc.freeze()
