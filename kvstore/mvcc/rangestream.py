"""etcd 3.7's RangeStream, decided: a RangeRequest read in chunks at one pinned revision.

The stream pins the revision it starts at (the request's, or the current one),
counts the range once, and then reads chunk after chunk from a key cursor, each
chunk a fresh seek into the store at the pinned revision: nothing is held
between chunks but the cursor, so writes may land meanwhile and memory is one
chunk. Intermediate chunks carry kvs only; the last one carries the header
revision, count and more too, so that merging the chunks gives exactly the
unary Range's answer. A compaction past the pinned revision ends the stream
with etcd's ErrCompacted, as in etcd, where each chunk is its own read.

Sorting other than by key ascending needs the whole result before the first
chunk, which defeats streaming: etcd answers Unimplemented and so does this.
"""

from __future__ import annotations

from typing import Any

from kvstore import errors
from kvstore.errors import EtcdError, fail
from kvstore.mvcc.store import MVCCStore, _passes_filters
from proto.etcdserverpb import rpc_pb2 as pb

CHUNK_KEYS_INITIAL = 10  # etcd's first chunk
CHUNK_KEYS_MAX = 1 << 20
SORT_UNSUPPORTED = "etcdserver: RangeStream does not support sorting other than by key ascending; use Range"


def next_chunk_keys(keys: int, chunk_bytes: int, target_bytes: int) -> int:
    """etcd's adaptive sizing: double while a chunk is under half the target, cut to a third
    when it is over twice the target."""
    if chunk_bytes < target_bytes // 2:
        return min(keys * 2, CHUNK_KEYS_MAX)
    if chunk_bytes > target_bytes * 2:
        return max(keys // 3, 1)
    return keys


def streamable(req: Any) -> bool:
    order, target = req.sort_order, req.sort_target
    if order == pb.RangeRequest.NONE:
        return bool(target == pb.RangeRequest.KEY)  # a target without an order sorts ascending
    return bool(order == pb.RangeRequest.ASCEND and target == pb.RangeRequest.KEY)


class RangeStreamer:
    """One RangeStream over a store. Construct it where a Range would run; then next_chunk()
    until done. Raises EtcdError as Range does (future or compacted revision, sorting)."""

    def __init__(self, store: MVCCStore, req: Any) -> None:
        if not streamable(req):
            raise EtcdError(errors.Code.UNIMPLEMENTED, SORT_UNSUPPORTED)
        store.check_revision(req.revision)
        self.store = store
        self.req = req
        self.header_revision = store.revision
        self.pinned = req.revision if req.revision > 0 else store.revision
        self.count = self._count()
        self.cursor: bytes = req.key
        self.sent = 0
        self.done = False
        self.more = False

    def _count(self) -> int:
        """Every live key of the range at the pinned revision, counted once."""
        store, req = self.store, self.req
        if req.revision <= 0:
            return store._count_live(req.key, req.range_end)
        return store.count_at(req.key, req.range_end, self.pinned)

    def _final(self, resp: Any) -> Any:
        self.done = True
        resp.header.revision = self.header_revision
        resp.count = self.count
        resp.more = self.more
        return resp

    def next_chunk(self, keys_max: int) -> Any:
        """The next RangeResponse chunk, of at most keys_max kvs."""
        assert not self.done, "stream already ended"
        store, req = self.store, self.req
        if self.pinned < store.compact_revision:
            raise fail(errors.COMPACTED)
        resp = pb.RangeResponse()
        if req.count_only:
            return self._final(resp)
        filtered = bool(
            req.min_mod_revision or req.max_mod_revision or req.min_create_revision or req.max_create_revision
        )
        out = []
        for kv in store.iter_live(self.cursor, req.range_end, self.pinned):
            if filtered and not _passes_filters(req, kv):
                continue
            key = kv.key
            if req.limit > 0 and self.sent == req.limit:
                self.more = True  # one more after the limit: etcd's `more`
                break
            out.append(kv)
            self.sent += 1
            if len(out) == keys_max and req.range_end:
                self.cursor = key + b"\0"
                resp.kvs.extend(out)
                self._strip(resp)
                return resp
        resp.kvs.extend(out)
        self._strip(resp)
        return self._final(resp)

    def _strip(self, resp: Any) -> None:
        if self.req.keys_only:
            for kv in resp.kvs:
                kv.ClearField("value")
