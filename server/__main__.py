"""`python -m server`: see server/cli.py."""

import sys

from server.cli import get_args_parser, main

if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
