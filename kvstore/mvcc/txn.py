"""Transactions: etcd's txn path decided up front, apply-time checks, and execution on a WriteTxn.

The walks over nested txns are module functions, not closures: a closure that calls itself is a
reference cycle, and every txn then left its write txn, events and response for the garbage
collector (under 100-put txns a young collection freed ~20K objects at a time, 20-36 ms of the
member's loop; tests/unit/test_apply_garbage.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kvstore import errors
from kvstore.errors import fail
from kvstore.mvcc.store import MVCCStore, WriteTxn
from proto.etcdserverpb import rpc_pb2 as pb

# The ops of one branch on a txn's path: (kind, its request), read once (an access to a field
# of a parsed op costs about 0.1-0.2 µs, and each op is visited by three passes).
Ops = list[tuple[str, Any]]


def txn_path(store: MVCCStore, req: Any) -> tuple[list[bool], list[Ops]]:
    """Evaluate the compares of a txn and of every nested txn on the chosen path, before any write.

    etcd decides the whole path up front (compareToPath), against the state
    before the txn. Returns the outcome of every txn on the path and the ops of the branch
    it takes, in the order the txns are met (a txn, then the nested ones of its branch).
    """
    path: list[bool] = []
    branches: list[Ops] = []
    _walk_path(store, req, path, branches)
    return path, branches


def _walk_path(store: MVCCStore, t: Any, path: list[bool], branches: list[Ops]) -> None:
    ok = all(store.compare(c) for c in t.compare)
    path.append(ok)
    ops: Ops = []
    branches.append(ops)
    for op in t.success if ok else t.failure:
        kind = op.WhichOneof("request")
        sub = getattr(op, kind) if kind is not None else None
        ops.append((kind, sub))
        if kind == "request_txn":
            _walk_path(store, sub, path, branches)


def check_txn_ops(store: MVCCStore, branches: list[Ops]) -> None:
    """etcd's apply-time checks on the chosen branches, in its order: every put (lease,
    ignore_* target) first, then every range revision."""
    puts: list[Any] = []
    ranges: list[Any] = []
    _collect(branches, iter(range(len(branches))), puts, ranges)
    for put in puts:
        check_put(store, put)
    for r in ranges:
        if r.revision > 0:
            store.check_revision(r.revision)


def _collect(branches: list[Ops], order: Iterator[int], puts: list[Any], ranges: list[Any]) -> None:
    """The puts and the ranges on the path, each in op order (a nested txn's where it stands)."""
    for kind, sub in branches[next(order)]:
        if kind == "request_put":
            puts.append(sub)
        elif kind == "request_range":
            ranges.append(sub)
        elif kind == "request_txn":
            _collect(branches, order, puts, ranges)


def check_put(store: MVCCStore, req: Any) -> None:
    if (req.ignore_value or req.ignore_lease) and store.get(req.key) is None:
        raise fail(errors.KEY_NOT_FOUND)
    if req.lease and req.lease not in store.leases:
        raise fail(errors.LEASE_NOT_FOUND)


def txn_has_writes(req: Any) -> bool:
    """True unless every op in both branches is a Range (etcd's isTxnReadonly)."""
    return any(op.WhichOneof("request") != "request_range" for op in (*req.success, *req.failure))


def read_only_txn_is_serializable(req: Any) -> bool:
    """etcd: a read-only txn skips the read barrier only if it has ranges and all are serializable."""
    ops = (*req.success, *req.failure)
    return bool(ops) and all(op.request_range.serializable for op in ops)


def execute_txn(store: MVCCStore, req: Any, txn: WriteTxn) -> Any:
    """Run a validated TxnRequest inside txn; return the TxnResponse (header revision set by caller)."""
    path, branches = txn_path(store, req)
    check_txn_ops(store, branches)
    return _run(store, txn, path, branches, iter(range(len(path))), nested=False)


def _run(store: MVCCStore, txn: WriteTxn, path: list[bool], branches: list[Ops], order: Iterator[int],
         *, nested: bool) -> Any:  # fmt: skip
    index = next(order)
    resp = pb.TxnResponse(succeeded=path[index])
    add = resp.responses.add
    for kind, r in branches[index]:
        out = add()
        if kind == "request_put":
            prev = txn.put(r.key, r.value, r.lease, ignore_value=r.ignore_value, ignore_lease=r.ignore_lease)
            out.response_put.header.revision = txn.revision
            if prev is not None and r.prev_kv:
                out.response_put.prev_kv.CopyFrom(prev)
        elif kind == "request_range":
            out.response_range.CopyFrom(store.range(r, txn=txn))
        elif kind == "request_delete_range":
            prevs = txn.delete_range(r.key, r.range_end)
            d = out.response_delete_range
            d.header.revision = txn.revision if txn.changed else store.revision
            d.deleted = len(prevs)
            if r.prev_kv:
                d.prev_kvs.extend(prevs)
        elif kind == "request_txn":
            out.response_txn.CopyFrom(_run(store, txn, path, branches, order, nested=True))
    if nested:
        resp.header.SetInParent()  # etcd leaves a nested txn's header empty
    else:
        resp.header.revision = txn.revision if txn.changed else store.revision
    return resp
