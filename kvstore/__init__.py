"""kvstore: an etcd v3 compatible member that tails the journal."""

__version__ = "0.1.0"
