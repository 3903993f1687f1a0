"""Watches served in a front end: the member's hub and Watch servicer, fed from the view.

The member's applier publishes each revision's events to its hub (kvstore/watch.py) as it
applies them. A front end has no applier: it runs the same WatchHub, WatchStream and Watch
servicer (kvstore/v3rpc/servicers.py) over `ViewFeed`, which publishes what the applier
committed by reading it back from the state file. The feed's store is an MVCCStore over one
read transaction of the view's environment that only the feed moves forward (`advance`): on
every "applied" notification while a stream is open, and before each request of a watch
stream is handled, it opens a read transaction at the newest commit, reads the events of the
revisions after the ones it published (MVCCStore.events_between, what catch-up reads),
publishes them in revision order, then moves the store's counters (revision, compact
revision) and its transaction to that commit. So between two advances the hub's store is one
consistent snapshot at exactly the revision whose events were published, as the member's
store is between two applies: progress notifications (periodic and requested), catch-up, the
watch cache and compaction cancels behave as the member's, by the same code.

With no stream open the feed reads no events (that read-back was most of a front end's CPU
per applied revision): the first advance of the next stream moves the counters to the newest
commit and starts the watch cache there (WatchHub.rebind, with nobody to catch up), so a
watch created from an older revision catches up from the records, or is cancelled as
compacted, as etcd answers it. The records cannot give back a delete at the compact revision
itself, which etcd sends to a watch from there: the feed keeps that revision's events when it
sees the compaction, before the fence is answered (FeedStore).

The one thing the member knows that a later snapshot may not hold: the records a physical
compaction step removed after the revisions were committed (the events a live watcher would
have had). The store marks the highest target whose steps began (META_PHYSICAL_COMPACT); if
it lies above the published revision, the feed cannot replay that window, and turns every
live watcher into a catching-up one (`WatchHub.rebind`, as the member does when it installs
a snapshot): each then catches up from the records, or is cancelled with the compact
revision, as etcd cancels a watcher that fell behind a compaction. Nothing is skipped silently.

A watch created with auth on runs as the member would run it (a JWT's user; a simple token's
user; with
--client-cert-auth the certificate's common name; else no one), checked against the auth store
of the feed's snapshot. What the front end does not decide it forwards to the member's process
at the stream's start: a call with a simple token its mirror does not hold, any call while the
notification channel is down or while the front end stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack

from kvstore.auth.store import AuthStore
from kvstore.auth.tokens import JWTTokens
from kvstore.member.config import MemberConfig
from kvstore.mvcc.backend import DB_META, META_PHYSICAL_COMPACT, from_u64
from kvstore.mvcc.keyindex import in_range
from kvstore.mvcc.store import META_MVCC, MVCCStore, RevisionEvents
from kvstore.statemachine import META_AUTH
from kvstore.transport.cmux import PeerIdentities
from kvstore.v3rpc.servicers import Malformed, Watch, strict_parser
from kvstore.watch import WatchHub
from kvstore.workers.credentials import FrontEndCredentials
from kvstore.workers.forward import Forwarder
from kvstore.workers.metrics import FrontEndMetrics
from kvstore.workers.notify import MemberNotifications
from kvstore.workers.view import ReadOnlyBackend, StateView
from proto.etcdserverpb import rpc_pb2 as pb

WATCH = "/etcdserverpb.Watch/Watch"
EVERY_KEY = b"\0"  # from the first key on, in MVCCStore's terms (key and range_end)
WATCH_GAUGES_INTERVAL_S = 0.5


class PinnedSnapshot:
    """What an MVCCStore reads through: the view's environment, through one read transaction
    that the feed replaces (`Backend.txn` would renew itself at every commit)."""

    def __init__(self, backend: ReadOnlyBackend) -> None:
        self.backend = backend
        self.dbs = backend.dbs
        self.txn: Any = backend.snapshot_txn()

    def get_meta(self, name: bytes, txn: Any = None) -> bytes | None:
        value: bytes | None = (txn or self.txn).get(name, db=self.dbs[DB_META])
        return value

    def release(self) -> None:
        txn, self.txn = self.txn, None
        if txn is not None:
            txn.abort()


class FeedStore(MVCCStore):
    """The feed's store, with the events of the compact revision itself kept from before the
    compaction: the records no longer answer a delete there (a tombstone at or below the compact
    revision is compacted), which etcd (>= 3.5.15) sends to a watch from that revision, and which
    the member's cache holds. A feed with no stream has no cache to keep it in."""

    compact_events: RevisionEvents | None = None

    def events_between(
        self, start_rev: int, key: bytes, range_end: bytes, end_rev: int | None = None, records_max: int = 0
    ) -> tuple[list[RevisionEvents], int]:
        out, covered = super().events_between(start_rev, key, range_end, end_rev, records_max)
        kept = self.compact_events
        if kept is None or kept.revision != self.compact_revision or not start_rev <= kept.revision <= covered:
            return out, covered
        events = [ev for ev in kept.events if in_range(ev.kv.key, key, range_end)]
        if out and out[0].revision == kept.revision:
            out[0] = RevisionEvents(kept.revision, events)  # every event of that revision, in order
        elif events:
            out.insert(0, RevisionEvents(kept.revision, events))
        return out, covered


class _Auth:
    """The member's `sm` as the Watch servicer uses it: the auth store of the published snapshot."""

    def __init__(self) -> None:
        self.auth = AuthStore()


class ViewFeed:
    """The front end's WatchHub and the store it reads, moved forward from the view."""

    def __init__(self, view: StateView, config: MemberConfig, identity: Callable[[], Any]) -> None:
        self.view = view
        self.identity = identity  # the member's ids and raft term
        self.config = config
        self.snapshot = PinnedSnapshot(view.backend)
        self.store = FeedStore(self.snapshot)  # type: ignore[arg-type]  # reads through the pinned txn
        self.sm = _Auth()
        self._auth_raw: bytes | None = None
        self._txn_id = self.snapshot.txn.id()
        self._read_auth()
        self.hub = WatchHub(
            self.store,
            self.header,
            cache_revisions_max=config.watch_cache_revisions,
            cache_bytes_max=config.watch_cache_bytes,
            max_request_bytes=config.max_request_bytes,
        )
        self._replaced = False
        view.replaced_listeners.append(self._file_replaced)

    def header(self, revision: int) -> Any:
        header = pb.ResponseHeader()
        header.CopyFrom(self.identity())
        header.revision = revision
        return header

    def _read_auth(self) -> None:
        raw = self.snapshot.get_meta(META_AUTH)
        if raw != self._auth_raw:
            self._auth_raw = raw
            self.sm.auth = AuthStore.from_state(msgpack.unpackb(raw, raw=False)) if raw else AuthStore()

    def _file_replaced(self, backend: ReadOnlyBackend) -> None:
        """A defragment or a snapshot install: the old environment closes after this returns."""
        revision, compact = self.store.revision, self.store.compact_revision
        self.snapshot.release()
        self.snapshot = PinnedSnapshot(backend)
        kept = self.store.compact_events
        self.store = FeedStore(self.snapshot)  # type: ignore[arg-type]
        self.store.revision, self.store.compact_revision = revision, compact  # what was published
        self.store.compact_events = kept
        self.hub.store = self.store  # the same published state, new handles (as the member's defragment)
        self._replaced = True
        self._txn_id = -1
        self.advance()

    def advance(self) -> None:
        """Publish every revision committed since the last advance, in order (no await)."""
        self.view.follow_replacement()  # may call _file_replaced, which advances
        backend = self.snapshot.backend
        txn = backend.snapshot_txn()
        if txn.id() == self._txn_id and self.snapshot.txn is not None:
            txn.abort()
            return
        raw = backend.get_meta(META_MVCC, txn)
        if raw is None:  # a file with no revision yet
            txn.abort()
            return
        revision, compact, _ = msgpack.unpackb(raw)
        floor_raw = backend.get_meta(META_PHYSICAL_COMPACT, txn)
        # Absent: no physical step since this code wrote the file (a step of a target above the
        # published revision writes it first). A replaced file (snapshot install: only what the
        # compaction kept) counts as compacted.
        floor = compact if self._replaced else from_u64(floor_raw) if floor_raw is not None else -1
        self._replaced = False
        store, hub = self.store, self.hub
        published = store.revision
        self.snapshot.release()
        self.snapshot.txn = txn
        self._txn_id = txn.id()
        self._read_auth()
        if compact > store.compact_revision and floor < compact:
            self._keep_compact_events(compact)
        # The records of the unpublished revisions may be gone (or they would not all fit in the
        # cache): every watcher catches up in bounded batches, or is cancelled as compacted.
        unreadable = revision < published or floor > published or revision - published > hub.cache.revisions_max
        # No stream: nobody needs these events now, and reading them back would be most of what the
        # feed costs. The cache starts at the new revision, and a watch created later from an older
        # one catches up from the records (or is cancelled as compacted), as etcd answers it.
        if unreadable or not hub.streams:
            store.revision, store.compact_revision = revision, compact
            hub.rebind(store)
            self._release_if_idle()
            return
        if revision > published:
            store.revision = revision  # prev_kv reads at mod_revision - 1; compact stays as published
            for rev_events in store.events_between(published + 1, EVERY_KEY, EVERY_KEY, revision)[0]:
                hub.publish(rev_events)
        if compact > store.compact_revision:
            store.compact_revision = compact
            hub.compacted(compact)

    def _keep_compact_events(self, compact: int) -> None:
        """Read revision `compact`'s events, deletes included, through the new transaction while
        its records are still on file (physical steps wait for this front end's fence answer)."""
        store = self.store
        kept = store.compact_events
        if kept is not None and kept.revision == compact:
            return
        saved = store.compact_revision
        store.compact_revision = compact - 1  # below it: the tombstones at `compact` are read too
        try:
            found = store.events_between(compact, EVERY_KEY, EVERY_KEY, compact)[0]
        finally:
            store.compact_revision = saved
        store.compact_events = found[0] if found and found[0].revision == compact else RevisionEvents(compact, [])

    def fenced(self) -> None:
        """A compaction's records are about to go: keep its revision's events now if no advance
        did (with no stream open the feed is not advanced at each batch)."""
        self.advance()

    def applied(self, _position: int) -> None:
        """An applied batch: published at once to the streams open; with none, the next stream's
        first advance moves the counters (no revision's events are read for nobody)."""
        if self.hub.streams:
            self.advance()
        else:
            self._release_if_idle()  # the last stream's read transaction ends with the next batch

    def _release_if_idle(self) -> None:
        """With no stream, hold no read transaction (it would pin pages the applier frees)."""
        if not self.hub.streams:
            self.snapshot.release()

    async def report_loop(self, metrics: FrontEndMetrics) -> None:
        """The watches served here, into the member's /metrics (summed with the member's own)."""
        while True:
            metrics.watching(len(self.hub.streams), self.hub.watcher_count)
            await asyncio.sleep(WATCH_GAUGES_INTERVAL_S)

    async def progress_loop(self) -> None:
        """etcd's --watch-progress-notify-interval, at the revision the feed published."""
        while True:
            await asyncio.sleep(self.config.progress_notify_interval_s)
            if self.hub.streams:
                self.advance()
                self.hub.progress_tick()
            else:
                self._release_if_idle()


class LocalWatches:
    """The front end's Watch: the member's servicer over the feed's hub, or forwarded."""

    def __init__(
        self,
        feed: ViewFeed,
        notifications: MemberNotifications,
        identities: PeerIdentities | None = None,
        jwt: JWTTokens | None = None,
    ) -> None:
        """identities: the front end's, with --client-cert-auth (a watch runs as its certificate's
        common name, at the auth revision the feed last read, as in the member); jwt: --auth-token
        jwt's verifier."""
        self.feed = feed
        self.notifications = notifications
        self.credentials = FrontEndCredentials(identities, lambda: feed.sm.auth.revision, jwt, notifications.tokens)
        self.servicer = Watch(feed, self.credentials)  # type: ignore[arg-type]  # the feed is its member
        self._parse = strict_parser(pb.WatchRequest)
        self.stopping = False
        notifications.applied_listeners.append(feed.applied)
        notifications.fence_listeners.append(feed.fenced)

    def handlers(self) -> dict[str, Any]:
        return {WATCH: self.watch}

    def _may_serve(self, context: Any) -> bool:
        return not (self.stopping or not self.credentials.answers_here(context) or not self.notifications.up)

    async def watch(self, requests: AsyncIterator[bytes], context: Any, forwarder: Forwarder) -> None:
        if not self._may_serve(context):
            async for response in forwarder.forward_stream(WATCH, requests, context):
                await context.write(response)
            return
        await self.servicer.Watch(self._requests(requests, context), context)

    async def _requests(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        async for raw in requests:
            msg = self._parse(raw)
            if isinstance(msg, Malformed):
                await msg.abort(context)
            # Every write acknowledged before this request is published first: a watch created now
            # starts after it, a progress request answers at least its revision (as in the member).
            self.feed.advance()
            yield msg
