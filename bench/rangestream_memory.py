"""Server memory of one large list: unary Range vs RangeStream on ours, unary Range on etcd, same run.

    python -m bench.rangestream_memory [--keys 40000] [--value-bytes 1024]

Each measurement uses a fresh server (peak RSS only grows): load the keys, note the server's
peak resident set (VmHWM), read the whole range once (the client drops each chunk as it
arrives), note the peak again. The figure is the growth of the peak, in MiB. etcd has no
RangeStream before 3.7, so etcd's line is its unary Range.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import grpc

from bench.servers import Server, start_etcd, start_kvstore
from proto.etcdserverpb import rpc_pb2 as pb
from proto.etcdserverpb import rpc_pb2_grpc as rpc

TXN_OPS = 100
MIB = 1024 * 1024
MESSAGE_BYTES_MAX = 1 << 30


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def load(channel: grpc.Channel, keys: int, value_bytes: int) -> None:
    kv = rpc.KVStub(channel)
    value = b"v" * value_bytes
    for start in range(0, keys, TXN_OPS):
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"/m/%08d" % i, value=value))
               for i in range(start, min(start + TXN_OPS, keys))]
        kv.Txn(pb.TxnRequest(success=ops), timeout=60)


def measure(server: Server, keys: int, value_bytes: int, stream: bool) -> tuple[float, int]:
    options = [("grpc.max_receive_message_length", MESSAGE_BYTES_MAX)]
    channel = grpc.insecure_channel(server.endpoints[0].split("//")[1], options=options)
    try:
        load(channel, keys, value_bytes)
        pid = server.pids()[-1]
        before = peak_rss_bytes(pid)
        req = pb.RangeRequest(key=b"/m/", range_end=b"/m0")
        kv = rpc.KVStub(channel)
        if stream:
            got = sum(len(c.range_response.kvs) for c in kv.RangeStream(req, timeout=600))
        else:
            got = len(kv.Range(req, timeout=600).kvs)
        return (peak_rss_bytes(pid) - before) / MIB, got
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=40_000)
    p.add_argument("--value-bytes", type=int, default=1024)
    args = p.parse_args(argv)
    print(f"{args.keys} keys x {args.value_bytes} B values (~{args.keys * args.value_bytes / MIB:.0f} MiB)")
    with tempfile.TemporaryDirectory() as tmp:
        for label, start, stream in (
            ("etcd     Range      ", lambda: start_etcd(Path(tmp), name="etcd"), False),
            ("kvstore  Range      ", lambda: start_kvstore(Path(tmp), name="kv-range"), False),
            ("kvstore  RangeStream", lambda: start_kvstore(Path(tmp), name="kv-stream"), True),
        ):
            server = start()
            try:
                grown, got = measure(server, args.keys, args.value_bytes, stream)
            finally:
                server.stop()
            print(f"{label}: peak RSS grew {grown:7.1f} MiB reading {got} keys")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
