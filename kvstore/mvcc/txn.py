"""Transactions: etcd's txn path decided up front, apply-time checks, and execution on a WriteTxn."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from kvstore import errors
from kvstore.errors import fail
from kvstore.mvcc.store import MVCCStore, WriteTxn
from proto.etcdserverpb import rpc_pb2 as pb


def txn_path(store: MVCCStore, req: Any) -> list[bool]:
    """Evaluate the compares of a txn and of every nested txn on the chosen path, before any write.

    etcd decides the whole path up front (compareToPath), against the state
    before the txn.
    """
    path: list[bool] = []
    _walk_compares(store, req, path)
    return path


# The walks below are module functions, not closures: a closure that calls itself is a reference
# cycle, left with everything it holds for the garbage collector after every txn.
def _walk_compares(store: MVCCStore, t: Any, path: list[bool]) -> None:
    ok = all(store.compare(c) for c in t.compare)
    path.append(ok)
    for op in t.success if ok else t.failure:
        if op.WhichOneof("request") == "request_txn":
            _walk_compares(store, op.request_txn, path)


def check_txn_ops(store: MVCCStore, req: Any, path: Sequence[bool]) -> None:
    """etcd's apply-time checks on the chosen branches, in its order: every put (lease,
    ignore_* target) first, then every range revision."""
    for kind, op in _path_ops(req, iter(path)):
        if kind == "request_put":
            check_put(store, op.request_put)
    for kind, op in _path_ops(req, iter(path)):
        if kind == "request_range" and op.request_range.revision > 0:
            store.check_revision(op.request_range.revision)


def _path_ops(t: Any, path: Iterator[bool]) -> Iterator[tuple[str, Any]]:
    """Every op but nested txns on the chosen path, in order (a nested txn's ops where it stands)."""
    ok = next(path)
    for op in t.success if ok else t.failure:
        kind = op.WhichOneof("request")
        if kind == "request_txn":
            yield from _path_ops(op.request_txn, path)
        else:
            yield kind, op


def check_put(store: MVCCStore, req: Any) -> None:
    if (req.ignore_value or req.ignore_lease) and store.get(req.key) is None:
        raise fail(errors.KEY_NOT_FOUND)
    if req.lease and req.lease not in store.leases:
        raise fail(errors.LEASE_NOT_FOUND)


def txn_has_writes(req: Any) -> bool:
    """True unless every op in both branches is a Range (etcd's isTxnReadonly)."""
    return any(op.WhichOneof("request") != "request_range" for op in (*req.success, *req.failure))


def execute_txn(store: MVCCStore, req: Any, txn: WriteTxn) -> Any:
    """Run a validated TxnRequest inside txn; return the TxnResponse (header revision set by caller)."""
    path = txn_path(store, req)
    check_txn_ops(store, req, path)
    return _run(store, txn, iter(path), req, nested=False)


def _run(store: MVCCStore, txn: WriteTxn, path: Iterator[bool], t: Any, nested: bool) -> Any:
    """One (nested) txn of the path, in the order txn_path walked them. A module function, not a
    closure: a closure that calls itself is a reference cycle, and every txn's events, write txn and
    response were then left for the collector (tens of ms per young collection under a txn load)."""
    ok = next(path)
    resp = pb.TxnResponse(succeeded=ok)
    for op in t.success if ok else t.failure:
        kind = op.WhichOneof("request")
        out = resp.responses.add()
        if kind == "request_range":
            out.response_range.CopyFrom(store.range(op.request_range, txn=txn))
        elif kind == "request_put":
            r = op.request_put
            prev = txn.put(r.key, r.value, r.lease, ignore_value=r.ignore_value, ignore_lease=r.ignore_lease)
            out.response_put.header.revision = txn.revision
            if r.prev_kv and prev is not None:
                out.response_put.prev_kv.CopyFrom(prev)
        elif kind == "request_delete_range":
            r = op.request_delete_range
            prevs = txn.delete_range(r.key, r.range_end)
            d = out.response_delete_range
            d.header.revision = txn.revision if txn.changed else store.revision
            d.deleted = len(prevs)
            if r.prev_kv:
                d.prev_kvs.extend(prevs)
        elif kind == "request_txn":
            out.response_txn.CopyFrom(_run(store, txn, path, op.request_txn, nested=True))
    if nested:
        resp.header.SetInParent()  # etcd leaves a nested txn's header empty
    else:
        resp.header.revision = txn.revision if txn.changed else store.revision
    return resp
