"""``python -m fla_compile <command>``: ``tune`` pre-tunes the kernels; ``explain`` and ``bench`` are to come."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m fla_compile")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("tune", help="pre-tune the Triton kernels for common shapes (see 'tune --help')", add_help=False)
    sub.add_parser("explain", help="not yet")
    sub.add_parser("bench", help="not yet")
    args, rest = p.parse_known_args(argv[:1])
    if args.command == "tune":
        from .lowering.autotune import tune_main

        return tune_main(argv[1:])
    print(f"fla_compile {args.command}: not yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
