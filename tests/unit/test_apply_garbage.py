"""Applying entries leaves nothing for the cycle collector: under a write load its young
collections would otherwise free tens of thousands of objects at a time, a stall of the loop."""

from __future__ import annotations

import gc

from kvstore.statemachine import Kind, StateMachine, encode_entry
from proto.etcdserverpb import rpc_pb2 as pb


def _put(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"v" * 100, prev_kv=True))


def _range(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key))


def test_applying_puts_txns_and_deletes_makes_no_reference_cycles() -> None:
    sm = StateMachine()
    entries: list[tuple[Kind, bytes]] = [(Kind.PUT, pb.PutRequest(key=b"/a/%d" % i, value=b"x").SerializeToString())
                                         for i in range(20)]  # fmt: skip
    flat = pb.TxnRequest(success=[_put(b"/scale/%03d" % i) for i in range(100)])
    nested = pb.TxnRequest(
        compare=[pb.Compare(key=b"/a/1", target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=0)],
        success=[
            pb.RequestOp(request_txn=pb.TxnRequest(success=[_put(b"/n"), _range(b"/n")])),
            pb.RequestOp(request_range=pb.RangeRequest(key=b"/a/", range_end=b"/a0", revision=2)),
        ],
        failure=[_put(b"/never")],
    )  # fmt: skip
    entries += [(Kind.TXN, flat.SerializeToString()), (Kind.TXN, nested.SerializeToString())] * 5
    delete = pb.DeleteRangeRequest(key=b"/a/", range_end=b"/a0", prev_kv=True)
    entries.append((Kind.DELETE_RANGE, delete.SerializeToString()))
    entries.append((Kind.TXN, pb.TxnRequest(success=[_put(b"/d"), _put(b"/d")]).SerializeToString()))  # duplicate
    data = [encode_entry(kind, 1, seq, payload) for seq, (kind, payload) in enumerate(entries)]
    try:
        gc.collect()
        gc.disable()
        try:
            for position, entry in enumerate(data, start=1):
                sm.backend.begin_batch()
                sm.apply(position, 1000, entry, flush=False)
                sm.flush()
                sm.backend.commit_batch()
            assert sm.store.revision > 1
            assert gc.collect() == 0
        finally:
            gc.enable()
    finally:
        sm.close()
