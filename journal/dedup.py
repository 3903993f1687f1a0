"""The replicated dedup table: which committed proposal answers a client's retry."""

from __future__ import annotations

from collections import OrderedDict

from journal.replication_io import ErrorCode
from journal.replication_log import DedupRecord, DedupState, EntryKind, LogEntry

# Committed requests remembered per client for retries (journal.client keeps its requests
# in flight within half of this: see DEDUP_WINDOW there and docs/journal.md).
DEDUP_REQUESTS_PER_CLIENT_MAX = 64


class DedupTable:
    """The replicated dedup table: a deterministic function of the committed log.

    Every node applies committed entries to it in order, so after a failover the new
    leader answers a retry with the original positions. Bounded: least recently
    active clients are forgotten first, and each client keeps its latest requests.
    """

    def __init__(self, clients_max: int, requests_max: int, state: DedupState = ()) -> None:
        self._clients_max = clients_max
        self._requests_max = requests_max
        self._table: OrderedDict[str, OrderedDict[int, DedupRecord]] = OrderedDict()
        for client_id, records in state:
            self._table[client_id] = OrderedDict((r.request_seq, r) for r in records)

    def lookup(self, client_id: str, request_seq: int) -> DedupRecord | ErrorCode | None:
        """The record of a committed request, DEDUP_EXPIRED if too old to know, else None."""
        records = self._table.get(client_id)
        if records is None:
            return None
        record = records.get(request_seq)
        if record is not None:
            return record
        if len(records) >= self._requests_max and request_seq < min(records):
            return ErrorCode.DEDUP_EXPIRED
        return None

    def apply(self, entry: LogEntry) -> None:
        """Record a committed proposal when its last entry commits."""
        if entry.kind is not EntryKind.DATA or not entry.client_id:
            return
        if entry.batch_index != entry.batch_size - 1:
            return
        records = self._table.pop(entry.client_id, None)
        if records is None:
            records = OrderedDict()
        records[entry.request_seq] = DedupRecord(
            entry.request_seq, entry.position - entry.batch_size + 1, entry.batch_size, entry.timestamp_ms
        )
        while len(records) > self._requests_max:
            records.popitem(last=False)
        self._table[entry.client_id] = records  # most recently active last
        while len(self._table) > self._clients_max:
            self._table.popitem(last=False)

    def state(self) -> DedupState:
        return tuple((client_id, tuple(records.values())) for client_id, records in self._table.items())
