"""Multi-version storage: revisions, history, ranges, txns and compaction (deterministic, no I/O)."""
