"""Moving onto this store: reading a real etcd snapshot (bbolt) into the state machine."""
