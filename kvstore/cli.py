"""The `kvstore` command: one entry point, one subcommand per component."""

from __future__ import annotations

import gc
import os
import sys

USAGE = """usage: kvstore <command> [options]

commands:
  serve       run an etcd v3 compatible member (default: single node on 127.0.0.1:2379);
              --partitions kube|FILE runs one member per partition of a plan
  kube-flags  print kube-apiserver's --etcd-servers and --etcd-servers-overrides for serve's options
  partitions  `partitions status`: one row per partition (revision, journal position, size, alarms)
  journal     run a journal node (one per availability zone)
  bench       drive an etcd endpoint with load and report throughput and latency

Run `kvstore <command> --help` for the options of each command.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "serve":
        from kvstore.transport.grpc_core import core_environment, grpc_behind_multiplexer

        # Before grpc is imported: it reads them then.
        os.environ.update(core_environment(os.environ, grpc_behind_multiplexer(rest, os.environ)))
        # The start-up imports make some 10^5 objects that all live: the collector's passes over them
        # (about 60, 20 ms) only delay the first answer after a restart (docs/benchmarks.md).
        gc.disable()
        try:
            from kvstore.server import main as serve_main
        finally:
            gc.enable()
        return serve_main(rest)
    if command == "kube-flags":
        from kvstore.partition.cli import kube_flags_main

        return kube_flags_main(rest)
    if command == "partitions":
        from kvstore.partition.cli import partitions_main

        return partitions_main(rest)
    if command == "journal":
        from journal.cli import main as journal_main

        return journal_main(rest)
    if command == "bench":
        from bench.cli import main as bench_main

        return bench_main(rest)
    print(f"kvstore: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
