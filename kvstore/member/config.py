"""A member's settings, identity helpers and the limits it runs with."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kvstore.auth.tokens import AUTH_TOKEN_TTL_S_DEFAULT

# What Status and /version report. Clients gate features on it: kube-apiserver requests watch progress
# from 3.4.31 / 3.5.13 and (1.37, EtcdRangeStream) streams lists with KV.RangeStream from 3.7; both are
# served, see docs/rangestream.md "The etcd version" and tests/differential/test_version_gates.py.
ETCD_VERSION = "3.7.0"
CLUSTER_VERSION = "3.7.0"
STORAGE_VERSION = "3.7.0"
PENDING_PROPOSALS_MAX = 10_000  # per member (shared out among its processes); beyond it "too many requests"
PROPOSAL_BATCH_ENTRIES_MAX = 1024
# Appends of proposals in flight at once (fewer if the journal says so: the local journal, one
# writer, takes 1); what arrives meanwhile waits in the outbox and goes
# out as one append when one returns. The journal commits in groups anyway (one fsync, one
# Raft round for what it has), so holding proposals for an in-flight append costs little
# latency and makes each append, applier batch and LMDB commit carry many entries instead of one.
PROPOSAL_APPENDS_INFLIGHT_MAX = 4
# ... but no longer than this: when appends hang (the journal quiet), what waits goes out on its
# own, so every write still fails or succeeds within the journal's request timeout of its arrival.
PROPOSAL_HOLD_S_MAX = 0.05
LEASE_EXPIRY_CHECK_S = 0.5
LEASE_EXPIRE_BATCH_MAX = 1000
LEASE_EXPIRE_RETRY_MS = 3000  # propose a due lease again only after this long
IDENTITY_FILE = "member.json"
JOURNAL_STATUS_INTERVAL_S = 0.5
# etcd's request timeout: 5 s + 2 x the election timeout (1 s by default). A proposal the
# journal has not committed by then answers "etcdserver: request timed out".
REQUEST_TIMEOUT_MS = 7000
JOURNAL_STATUS_TIMEOUT_S = 1.0  # one status round trip to the journal's leader, bounded
JOURNAL_CONTACT_S_MAX = 2.0  # no answer from the journal's leader for this long: /health false
BARRIER_SLOW_S = 0.5  # a journal barrier round slower than this is logged (a heal's record)
APPLIER_RETRY_S = 0.1  # the read stream gave up (journal unreachable): start it again after this
# Entry bytes applied in one write transaction, i.e. one event-loop step (one Txn of 100 1 KiB
# puts, a few ms): a journal read batch (up to 4 MiB) applied whole kept reads waiting 0.3-0.8 s.
APPLY_BATCH_BYTES_MAX = 64 * 1024
# Pause after each such step: with sleep(0) the applier took the loop back before gRPC's poller
# thread had handed over waiting requests, and a get needs a few loop turns (gaps doubled).
APPLY_PAUSE_S = 0.001
# Defragment: rounds of catching the copy up while applying goes on, then the rest (at most about
# this many entries, a few ms each) with applying held.
DEFRAG_CATCH_UP_ROUNDS_MAX = 5
DEFRAG_LOCKED_CATCH_UP_ENTRIES_MAX = 20
COMPACT_STEP_ENTRIES_MAX = 1000  # index entries one physical compaction step visits (about 1-5 ms)
COMPACT_PAUSE_MIN_S = 0.001
COMPACT_WAIT_POLL_S = 0.01
SNAPSHOT_READERS_POLL_S = 0.01  # a replaced environment waits for its snapshot streams this often
# Test-only fault injection (off unless set): SIGKILL this process right after the Nth batch
# commit, before the next journal read; or in the middle of the Nth batch, before its commit.
FAULT_KILL_AFTER_COMMIT_ENV = "KVSTORE_FAULT_KILL_AFTER_COMMIT"
FAULT_KILL_IN_BATCH_ENV = "KVSTORE_FAULT_KILL_IN_BATCH"
# The defragment copy, once taken, creates <file>.held and waits until <file> exists (the test
# holds it for as long as it needs, whatever the machine's load).
FAULT_DEFRAG_COPY_GATE_ENV = "KVSTORE_FAULT_DEFRAG_COPY_GATE"
FAULT_GATE_POLL_S = 0.01
MEMBER_HEARTBEATS_PER_TTL = 4


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def id64(text: str) -> int:
    """A stable non-zero 64-bit id (etcd derives member and cluster ids by hashing too)."""
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return value or 1


@dataclass
class MemberConfig:
    name: str = "default"
    data_dir: str = "default.etcd"
    state_dir: str = ""  # "" -> under /dev/shm (see default_state_dir)
    advertise_client_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    advertise_peer_urls: list[str] = field(default_factory=list)  # shown in MemberList; MemberAdd matches them
    member_liveness_ttl_s: float = 10.0  # a member missing heartbeats this long leaves MemberList
    initial_cluster_token: str = "etcd-cluster"
    log_name: str = "default"  # the journal log (partition) this member serves
    quota_backend_bytes: int = 2 * 1024 * 1024 * 1024
    max_request_bytes: int = 1_572_864
    max_txn_ops: int = 128
    auto_compaction_mode: str = "periodic"  # periodic | revision
    auto_compaction_retention: str = "0"  # "0" disables
    progress_notify_interval_s: float = 600.0  # etcd's default: 10 minutes
    snapshot_count: int = 100_000  # etcd's --snapshot-count: journal entries between snapshots
    snapshot_catchup_entries: int = 5000  # entries kept behind a snapshot for members slightly behind
    watch_cache_revisions: int = 100_000
    metrics: str = "basic"  # etcd's --metrics: basic | extensive (adds gRPC handling-time histograms)
    watch_cache_bytes: int = 16 * 1024 * 1024
    auth_token_ttl_s: float = AUTH_TOKEN_TTL_S_DEFAULT  # etcd's --auth-token-ttl (simple tokens)
    # The journal is this member's own (the embedded local journal: no other member, no other process
    # appends to it). Every write is then acknowledged only after this member applied it, so a
    # linearizable read needs what is applied when it arrives, not the journal's committed position.
    journal_exclusive: bool = False
    # This process's share of the member's PENDING_PROPOSALS_MAX (kvstore serve --workers N: 1/N each).
    pending_proposals_max: int = PENDING_PROPOSALS_MAX


def new_lease_id() -> int:
    """A lease ID for a grant that names none: chosen by whoever proposes it (any process of a
    member); the applier refuses one that exists, as etcd does."""
    return random.getrandbits(62) | (1 << 61)  # positive, and never 0


def default_state_dir(data_dir: str) -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else os.path.join(os.path.abspath(data_dir), "state")
    digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:12]
    return os.path.join(base, "kvstore", f"{os.path.basename(os.path.abspath(data_dir))}-{digest}")


def parse_duration_s(text: str, default_unit_s: float) -> float:
    """etcd's retention values: a bare number is in the default unit (hours), else a Go duration like 5m, 30s."""
    text = text.strip()
    try:
        return float(text) * default_unit_s
    except ValueError:
        pass
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total = 0.0
    number = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if unit not in units or not number:
            raise ValueError(f"invalid duration {text!r}")
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    if number:
        raise ValueError(f"invalid duration {text!r}: missing unit")
    return total


def batch_parts(batch: list[Any], bytes_max: int) -> Iterator[list[Any]]:
    """A journal batch cut into runs of entries of at most bytes_max bytes (at least one entry each)."""
    part: list[Any] = []
    part_bytes = 0
    for entry in batch:
        if part and part_bytes + len(entry.data) > bytes_max:
            yield part
            part, part_bytes = [], 0
        part.append(entry)
        part_bytes += len(entry.data)
    if part:
        yield part
