"""Where the load tool sends a key: the partition of a plan that kube-apiserver would send it to."""

from __future__ import annotations

from bench.options import Options
from kvstore.partition.plan import DEFAULT_PARTITION, assign_urls, load_plan


class Routes:
    """The plan's partitions with their URLs (from --endpoints, as `kvstore serve` assigns them).

    Without a plan there is one partition, the default, on --endpoints."""

    def __init__(self, opts: Options) -> None:
        if not opts.partitions:
            self.plan = None
            self.urls = {DEFAULT_PARTITION: list(opts.endpoints)}
            return
        self.plan = assign_urls(load_plan(opts.partitions), list(opts.endpoints))
        self.urls = {p.name: list(p.client_urls) for p in self.plan.partitions}

    def partition_of(self, key: bytes) -> str:
        return DEFAULT_PARTITION if self.plan is None else self.plan.partition_for(key).name
