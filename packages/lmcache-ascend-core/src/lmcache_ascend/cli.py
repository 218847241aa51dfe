"""The `lmcache-ascend` command (console script of lmcache-ascend-core).

    lmcache-ascend doctor [--json] [--pool-size SIZE] [--matrix FILE]
    lmcache-ascend --version

Exit status: 0 when no check failed, 1 when one did, 2 on bad usage.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import lmcache_ascend
from lmcache_ascend import doctor


def _pool_size(text: str) -> int:
    try:
        return doctor.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _matrix_file(text: str) -> str:
    try:
        doctor.load_matrix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmcache-ascend", description="LMCache on Ascend NPUs and CPUs: host diagnostics.")
    parser.add_argument("--version", action="version", version=f"lmcache-ascend {lmcache_ascend.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    doctor_cmd = commands.add_parser(
        "doctor", help="check this host for lmcache-ascend (NPU, CANN, backends, versions, host memory)",
        description="Check this host for lmcache-ascend: NPUs, CANN toolkit and driver, the backends this wheel "
        "has, installed versions against the compatibility matrix, memory locking limits, and a trial "
        "host pool. One line per check (ok / info / warn / fail), with the fix under every warn and fail. "
        "Exit status 0 when no check failed, 1 when one did, 2 on bad usage.")
    doctor_cmd.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    doctor_cmd.add_argument(
        "--pool-size", type=_pool_size, default=doctor.DEFAULT_POOL_SIZE, metavar="SIZE",
        help="host memory to map, lock (mlock) and, on a host with NPUs, register with NPU 0, then free, as "
        "LMCache's local CPU pool would. SIZE: " + doctor.SIZE_HELP + ". Default: 64MiB (fast); pass your "
        "max_local_cpu_size to check the real pool")
    doctor_cmd.add_argument("--matrix", type=_matrix_file, default=None, metavar="FILE",
                            help="compatibility matrix JSON to check against (default: the one in this wheel)")
    doctor_cmd.set_defaults(run=_doctor)
    return parser


def _doctor(args: argparse.Namespace) -> int:
    return doctor.main(pool_size=args.pool_size, matrix=args.matrix, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # piped into a reader that stopped early (`| head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush must not fail too
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
