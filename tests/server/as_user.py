"""`python -m server`, run as user nobody: `python tests/server/as_user.py <server flags>`.

The tests run as root here, and root reads every file whatever its mode, so an unreadable
folder can only be shown to a server that is not root. The interpreter lives under /root (mode
700, closed to nobody), so the modules the server needs are imported first, then the process
drops to nobody and runs exactly what server/__main__.py runs.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PIL import Image  # noqa: E402

import server.app  # noqa: E402,F401 - imported while the interpreter's files can still be read
from server.cli import get_args_parser, main  # noqa: E402

Image.init()  # PIL imports its format plugins (and what they import) on first use

NOBODY = 65534

if __name__ == "__main__":
    args = get_args_parser().parse_args()
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    sys.exit(main(args))
