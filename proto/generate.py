"""Regenerate the Python code for etcd's API definitions in proto/.

    python -m proto.generate          # rewrite the generated files
    python -m proto.generate --check  # exit 1 if the committed files are stale

The .proto files import each other as "proto/<package>/<file>.proto", so the
generated modules live in the `proto` Python package (proto.etcdserverpb.rpc_pb2,
...). The protobuf package names (etcdserverpb, mvccpb, authpb), and therefore
the gRPC method names on the wire, are etcd's own.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    "proto/mvccpb/kv.proto",
    "proto/authpb/auth.proto",
    "proto/etcdserverpb/rpc.proto",
    "proto/leasepb/lease.proto",
]
GRPC_SOURCES = ["proto/etcdserverpb/rpc.proto"]


def generated_names(source: str) -> list[str]:
    stem = source[: -len(".proto")]
    names = [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
    if source in GRPC_SOURCES:
        names.append(f"{stem}_pb2_grpc.py")
    return names


def generate(out_dir: Path) -> None:
    import google.api  # googleapis-common-protos ships google/api/annotations.proto
    import grpc_tools
    from grpc_tools import protoc  # imported late: only this command needs grpcio-tools

    googleapis = Path(google.api.__path__[0]).parent.parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/descriptor.proto
    for source in SOURCES:
        args = ["protoc", f"-I{ROOT}", f"-I{googleapis}", f"-I{well_known}"]
        args += [f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
        if source in GRPC_SOURCES:
            args.append(f"--grpc_python_out={out_dir}")
        args.append(str(ROOT / source))
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {source}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the committed code is up to date")
    args = parser.parse_args(argv)
    if not args.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [
            name
            for source in SOURCES
            for name in generated_names(source)
            if not (ROOT / name).exists() or not filecmp.cmp(Path(tmp) / name, ROOT / name, shallow=False)
        ]
    if stale:
        print("stale generated code (run: python -m proto.generate):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
