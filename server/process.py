"""Process-wide settings a server wants from the start: more open files, and freed memory given back.

Both run once, in `python -m server`'s main (server/cli.py), before anything is loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
