"""Test-only failpoints, in the spirit of etcd's gofail: named faults built in, all off unless
the KVSTORE_FAILPOINTS environment variable (a comma list) names them when the process starts.

They exist so that the robustness suite (tests/robustness) can prove it fails when a rule is
broken. Never set in production; a process with one enabled says so in its log at start.

- ``stale_read`` (member): linearizable reads skip the journal barrier, and the applier lags
  by up to STALE_READ_LAG_S (random per batch, so members differ): a read can miss an acknowledged write;
- ``watch_skip_revision`` (member): live watch streams do not send the events of every
  WATCH_SKIP_EVERY-th revision;
- ``front_end_lag`` (a --workers front end): each read of the notification channel waits up to
  FRONT_END_LAG_S first, so the front end's view and watch feed lag the applier (a condition its
  guarantees must hold under, not a fault: tests/workers/test_watch_front_end.py);
- ``pin_read_stream`` (journal client): the read stream has no liveness deadline, so a member
  stays attached to a frozen leader (the behaviour before issue 10).
"""

from __future__ import annotations

import os

ENV = "KVSTORE_FAILPOINTS"
STALE_READ_LAG_S = 0.5
WATCH_SKIP_EVERY = 50
FRONT_END_LAG_S = 0.05
_ACTIVE = frozenset(name.strip() for name in os.environ.get(ENV, "").split(",") if name.strip())


def enabled(name: str) -> bool:
    return name in _ACTIVE


def active() -> frozenset[str]:
    return _ACTIVE
