"""Watches: the hub, the watch cache and the per-stream protocol.

One gRPC Watch stream is a WatchStream: it owns its watchers and one bounded
outbound queue. The applier publishes every revision's events to the hub
synchronously, right after applying them, so a stream's queue always holds
its events in revision order; a progress response put on the same queue after
them can never run ahead of an event (etcd's Bookmarkable guarantee).

A watcher is either *live* (it has every event up to the current revision
and gets new ones as they are published) or *catching up* (a task feeds it
history from the watch cache, or from the store's history when the cache no
longer reaches back far enough, in batches of at most WATCH_BATCH_REVISIONS_MAX
revisions, then turns it live with no await in between). A watcher whose
stream falls behind (full queue) goes back to catching up, like etcd's victims.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from journal import failpoints
from kvstore import errors
from kvstore.mvcc.store import EVENT_DELETE, EVENT_PUT, Event, MVCCStore, RevisionEvents
from proto.etcdserverpb import rpc_pb2 as pb

WATCH_BATCH_REVISIONS_MAX = 1000  # etcd's watchBatchMaxRevs: revisions per catch-up response
WATCH_BATCH_RECORDS_MAX = 10_000  # records read from the store per catch-up step (whole revisions)
WATCH_CACHE_REVISIONS_DEFAULT = 100_000
WATCH_CACHE_BYTES_DEFAULT = 16 * 1024 * 1024  # events' serialized size, prev_kv included
STREAM_QUEUE_RESPONSES_MAX = 1024  # beyond this a stream's watchers fall back to catching up
GRPC_OVERHEAD_BYTES = 512 * 1024
CANCEL_REASON_COMPACTED = "etcdserver: mvcc: required revision has been compacted"


class WatchCache:
    """The most recent revisions' events, oldest first, bounded by revision count and by bytes.

    Older revisions come from the store's records (MVCCStore.events_since), so the bounds
    only decide how far back catch-up is served from memory.
    """

    def __init__(
        self, revisions_max: int = WATCH_CACHE_REVISIONS_DEFAULT, bytes_max: int = WATCH_CACHE_BYTES_DEFAULT
    ) -> None:
        assert revisions_max > 0 and bytes_max > 0
        self.revisions_max = revisions_max
        self.bytes_max = bytes_max
        self.bytes = 0
        self._revs: deque[int] = deque()
        self._events: deque[RevisionEvents] = deque()
        self._sizes: deque[int] = deque()
        self.first_revision = 0  # revisions >= this (and <= the store revision) are all here

    def add(self, rev_events: RevisionEvents) -> None:
        if not self._events:
            self.first_revision = rev_events.revision
        size = sum(ev.ByteSize() for ev in rev_events.events)
        self._revs.append(rev_events.revision)
        self._events.append(rev_events)
        self._sizes.append(size)
        self.bytes += size
        while len(self._events) > self.revisions_max or (self.bytes > self.bytes_max and len(self._events) > 1):
            self._revs.popleft()
            self._events.popleft()
            self.bytes -= self._sizes.popleft()
            self.first_revision = self._events[0].revision

    def reset(self, next_revision: int) -> None:
        """Forget everything; the cache covers revisions from next_revision on."""
        self._revs.clear()
        self._events.clear()
        self._sizes.clear()
        self.bytes = 0
        self.first_revision = next_revision

    def covers(self, rev: int) -> bool:
        return self.first_revision != 0 and rev >= self.first_revision

    def between(self, start: int, end: int) -> list[RevisionEvents]:
        """Cached revisions in [start, end]."""
        i = bisect.bisect_left(self._revs, start)
        out = []
        while i < len(self._events) and self._revs[i] <= end:
            out.append(self._events[i])
            i += 1
        return out


def _without_prev(ev: Any) -> Any:
    return Event(type=ev.type, kv=ev.kv)


@dataclass(slots=True)
class Watcher:
    id: int
    key: bytes
    range_end: bytes | None  # None: one key; b"": every key >= key
    next_rev: int  # the first revision it still needs
    start_revision: int  # as asked (0: none); no progress reaches it before the store does (etcd #20221)
    prev_kv: bool
    no_put: bool
    no_delete: bool
    progress_notify: bool
    fragment: bool
    live: bool = False
    sent_since_tick: bool = False
    catch_up: asyncio.Task[None] | None = field(default=None, repr=False)

    def store_range_end(self) -> bytes:
        """The range in MVCCStore's terms (b"": one key, b"\\0": every key from key on)."""
        if self.range_end is None:
            return b""
        return self.range_end or b"\0"

    def matches(self, key: bytes) -> bool:
        if self.range_end is None:
            return key == self.key
        if not self.range_end:
            return key >= self.key
        return self.key <= key < self.range_end

    def select(self, events: list[Any], compact_revision: int) -> list[Any]:
        out = []
        for ev in events:
            if not self.matches(ev.kv.key):
                continue
            if (self.no_put and ev.type == EVENT_PUT) or (self.no_delete and ev.type == EVENT_DELETE):
                continue
            if not self.prev_kv or (ev.HasField("prev_kv") and ev.kv.mod_revision - 1 < compact_revision):
                # etcd reads prev_kv at mod_revision-1 when sending; compacted means absent.
                if ev.HasField("prev_kv"):
                    ev = _without_prev(ev)
            out.append(ev)
        return out


class WatchHub:
    """Every watch stream of a member, fed by the applier."""

    def __init__(
        self,
        store: MVCCStore,
        header: Callable[[int], Any],
        *,
        cache_revisions_max: int = WATCH_CACHE_REVISIONS_DEFAULT,
        cache_bytes_max: int = WATCH_CACHE_BYTES_DEFAULT,
        max_request_bytes: int = 1_572_864,
    ) -> None:
        self.store = store
        self.header = header  # revision -> ResponseHeader
        self.cache = WatchCache(cache_revisions_max, cache_bytes_max)
        self.cache.reset(store.revision + 1)
        self.streams: set[WatchStream] = set()
        # etcd fragments watch responses at max-request-bytes plus its gRPC overhead allowance.
        self.fragment_bytes_max = max_request_bytes + GRPC_OVERHEAD_BYTES

    @property
    def watcher_count(self) -> int:
        return sum(len(s.watchers) for s in self.streams)

    def rebind(self, store: MVCCStore) -> None:
        """The member replaced its store (installed a snapshot): every watcher catches up
        from the new store's history, or is cancelled as compacted if that history is gone."""
        self.store = store
        self.cache.reset(store.revision + 1)
        for stream in self.streams:
            for w in list(stream.watchers.values()):
                if w.live:
                    w.live = False
                    stream._start_catch_up(w)

    def publish(self, rev_events: RevisionEvents) -> None:
        self.cache.add(rev_events)
        for stream in self.streams:
            stream.publish(rev_events)

    def compacted(self, compact_revision: int) -> None:
        for stream in self.streams:
            stream.compacted(compact_revision)

    def progress_tick(self) -> None:
        for stream in self.streams:
            stream.progress_tick()


class WatchStream:
    """The server side of one Watch RPC."""

    def __init__(self, hub: WatchHub) -> None:
        self.hub = hub
        self.watchers: dict[int, Watcher] = {}
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self._next_id = 0
        self.closed = False
        hub.streams.add(self)

    def close(self) -> None:
        self.closed = True
        self.hub.streams.discard(self)
        for w in self.watchers.values():
            if w.catch_up is not None:
                w.catch_up.cancel()
        self.watchers.clear()

    def _send(self, resp: Any) -> None:
        self.queue.put_nowait(resp)

    # --------------------------------------------------------------- requests

    def handle(self, req: Any) -> None:
        kind = req.WhichOneof("request_union")
        if kind == "create_request":
            self._create(req.create_request)
        elif kind == "cancel_request":
            self._cancel(req.cancel_request.watch_id)
        elif kind == "progress_request":
            self._progress_request()

    def _create(self, creq: Any) -> None:
        store = self.hub.store
        key = creq.key or b"\0"
        range_end: bytes | None
        if not creq.range_end:
            range_end = None
        elif creq.range_end == b"\0":
            range_end = b""
        else:
            range_end = creq.range_end
        if range_end and key >= range_end:
            self._send(self._failed_create(errors.WATCH_RANGE_EMPTY))
            return
        if creq.start_revision < 0:
            self._send(self._failed_create(CANCEL_REASON_COMPACTED))
            return
        watch_id = creq.watch_id
        if watch_id:
            if watch_id in self.watchers:
                self._send(self._failed_create(errors.WATCH_DUPLICATE_ID))
                return
        else:
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        filters = set(creq.filters)
        w = Watcher(
            id=watch_id,
            key=key,
            range_end=range_end,
            next_rev=creq.start_revision or store.revision + 1,
            start_revision=creq.start_revision,
            prev_kv=creq.prev_kv,
            no_put=pb.WatchCreateRequest.NOPUT in filters,
            no_delete=pb.WatchCreateRequest.NODELETE in filters,
            progress_notify=creq.progress_notify,
            fragment=creq.fragment,
        )
        self.watchers[watch_id] = w
        self._send(pb.WatchResponse(header=self.hub.header(store.revision), watch_id=watch_id, created=True))
        if 0 < w.next_rev < store.compact_revision:
            self._cancel_compacted(w)
        elif w.next_rev <= store.revision:
            self._start_catch_up(w)
        else:
            w.live = True

    def _failed_create(self, reason: str) -> Any:
        return pb.WatchResponse(
            header=self.hub.header(self.hub.store.revision),
            watch_id=-1,
            created=True,
            canceled=True,
            cancel_reason=reason,
        )

    def _cancel(self, watch_id: int) -> None:
        w = self.watchers.pop(watch_id, None)
        if w is None:
            return  # etcd ignores unknown ids
        if w.catch_up is not None:
            w.catch_up.cancel()
        self._send(pb.WatchResponse(header=self.hub.header(self.hub.store.revision), watch_id=watch_id, canceled=True))

    def _cancel_compacted(self, w: Watcher) -> None:
        self.watchers.pop(w.id, None)
        if w.catch_up is not None and w.catch_up is not asyncio.current_task():
            w.catch_up.cancel()
        header = self.hub.header(0)
        self._send(
            pb.WatchResponse(
                header=header, watch_id=w.id, canceled=True, compact_revision=self.hub.store.compact_revision
            )
        )

    @staticmethod
    def _synced(w: Watcher, current: int) -> bool:
        """etcd's progressIfSync: every event up to now sent, and the start revision reached."""
        return w.live and w.next_rev == current + 1 and current >= w.start_revision

    def _all_synced(self) -> bool:
        current = self.hub.store.revision
        return all(self._synced(w, current) for w in self.watchers.values())

    def _progress_request(self) -> None:
        # Answered only when every watcher has every event up to now (etcd >= 3.5.13);
        # otherwise dropped, and the client asks again.
        if self.watchers and self._all_synced():
            self._send(pb.WatchResponse(header=self.hub.header(self.hub.store.revision), watch_id=-1))

    def progress_tick(self) -> None:
        current = self.hub.store.revision
        for w in self.watchers.values():
            if not w.progress_notify:
                continue
            if self._synced(w, current) and not w.sent_since_tick:
                self._send(pb.WatchResponse(header=self.hub.header(current), watch_id=w.id))
            w.sent_since_tick = False

    # ------------------------------------------------------------------ events

    def publish(self, rev_events: RevisionEvents) -> None:
        rev = rev_events.revision
        compact = self.hub.store.compact_revision
        overloaded = self.queue.qsize() >= STREAM_QUEUE_RESPONSES_MAX
        header = None  # one per revision, not per watcher
        for w in self.watchers.values():
            if not w.live or rev < w.next_rev:
                continue
            assert rev == w.next_rev, f"watcher {w.id} would skip from {w.next_rev} to {rev}"
            if overloaded:
                # The client reads too slowly: stop queueing, catch up from history later.
                w.live = False
                self._start_catch_up(w)
                continue
            w.next_rev = rev + 1
            if failpoints.enabled("watch_skip_revision") and rev % failpoints.WATCH_SKIP_EVERY == 0:
                continue  # test-only: the robustness suite must notice the gap
            events = w.select(rev_events.events, compact)
            if events:
                if header is None:
                    header = self.hub.header(rev)
                self._send_events(w, rev, events, header)

    def _send_events(self, w: Watcher, header_rev: int, events: list[Any], header: Any = None) -> None:
        w.sent_since_tick = True
        if header is None:
            header = self.hub.header(header_rev)
        resp = pb.WatchResponse(header=header, watch_id=w.id, events=events)
        limit = self.hub.fragment_bytes_max
        if not w.fragment or len(events) < 2 or resp.ByteSize() < limit:
            self._send(resp)
            return
        # etcd's sendFragments: fill each fragment until one more event would reach the limit.
        index = 0
        while index < len(events):
            frag = pb.WatchResponse(header=resp.header, watch_id=w.id, fragment=True)
            while index < len(events):
                frag.events.append(events[index])
                if len(frag.events) > 1 and frag.ByteSize() >= limit:
                    del frag.events[-1]
                    break
                index += 1
            if index == len(events):
                frag.fragment = False
            self._send(frag)

    def compacted(self, compact_revision: int) -> None:
        for w in list(self.watchers.values()):
            if not w.live and w.next_rev < compact_revision:
                self._cancel_compacted(w)

    def _start_catch_up(self, w: Watcher) -> None:
        w.catch_up = asyncio.get_running_loop().create_task(self._catch_up(w))

    async def _catch_up(self, w: Watcher) -> None:
        hub = self.hub
        while not self.closed and self.watchers.get(w.id) is w:
            store = hub.store
            current = store.revision
            if w.next_rev > current:
                w.live = True  # nothing awaited since reading `current`: no event can slip by
                w.catch_up = None
                return
            if w.next_rev < store.compact_revision:
                self._cancel_compacted(w)
                return
            end = min(current, w.next_rev + WATCH_BATCH_REVISIONS_MAX - 1)
            if hub.cache.covers(w.next_rev):
                batch = hub.cache.between(w.next_rev, end)
            else:
                batch, end = store.events_between(
                    w.next_rev, w.key, w.store_range_end(), end, records_max=WATCH_BATCH_RECORDS_MAX
                )
            events: list[Any] = []
            for rev_events in batch:
                events.extend(w.select(rev_events.events, store.compact_revision))
            w.next_rev = end + 1
            if events:
                # etcd stamps a catch-up batch with the store revision at sync time.
                self._send_events(w, current, events)
            while self.queue.qsize() >= STREAM_QUEUE_RESPONSES_MAX // 2 and not self.closed:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0)


async def drain(stream: WatchStream) -> None:
    """Cancel every catch-up task of a closed stream and wait for them to finish."""
    tasks = [w.catch_up for w in stream.watchers.values() if w.catch_up is not None]
    stream.close()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
