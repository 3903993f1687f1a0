"""The robustness suite: recorded histories, linearizability and watch checks, fault injection."""
