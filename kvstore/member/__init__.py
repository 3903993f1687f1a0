"""The member: an asyncio shell that proposes to the journal and applies from it.

- config.py: its settings, limits and identity helpers
- core.py: `Member`: the applier (the only writer of the state file), reads, leases,
  membership heartbeats, compaction, snapshots and their installation
- defrag.py: defragment (a compacting copy that replaces the state file)
- rounds.py: shared rounds (one journal barrier answers every reader waiting for it)
- proposer.py: requests as journal entries, batched, answered when applied
- snapshots.py: snapshot chunks between the event loop and a thread
"""

from kvstore.member.config import (
    CLUSTER_VERSION,
    ETCD_VERSION,
    FAULT_DEFRAG_COPY_GATE_ENV,
    FAULT_KILL_AFTER_COMMIT_ENV,
    FAULT_KILL_IN_BATCH_ENV,
    REQUEST_TIMEOUT_MS,
    STORAGE_VERSION,
    MemberConfig,
    default_state_dir,
    now_ms,
    parse_duration_s,
)
from kvstore.member.core import Member

__all__ = [
    "CLUSTER_VERSION",
    "ETCD_VERSION",
    "FAULT_DEFRAG_COPY_GATE_ENV",
    "FAULT_KILL_AFTER_COMMIT_ENV",
    "FAULT_KILL_IN_BATCH_ENV",
    "REQUEST_TIMEOUT_MS",
    "STORAGE_VERSION",
    "Member",
    "MemberConfig",
    "default_state_dir",
    "now_ms",
    "parse_duration_s",
]
