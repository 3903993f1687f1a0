"""Helpers for journal cluster tests: in-process nodes (free ports are bench.servers')."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.servers import free_ports
from journal.client import JournalClient
from journal.node import JournalNode, NodeConfig, PeerSpec


class InProcessCluster:
    """N journal nodes in this event loop, one per AZ, on loopback."""

    def __init__(self, base: Path, ids: str = "abc", fsync: str = "always", tick_ms: int = 20) -> None:
        self.base = base
        self.ids = list(ids)
        self.ports = dict(zip(self.ids, free_ports(len(self.ids)), strict=True))
        self.fsync = fsync
        self.tick_ms = tick_ms
        self.nodes: dict[str, JournalNode] = {}

    def addr(self, node_id: str) -> str:
        return f"127.0.0.1:{self.ports[node_id]}"

    def config(self, node_id: str) -> NodeConfig:
        peers = tuple(PeerSpec(m, m, self.addr(m)) for m in self.ids if m != node_id)
        return NodeConfig(
            node_id, node_id, self.addr(node_id), peers, str(self.base / node_id),
            fsync=self.fsync, tick_ms=self.tick_ms,  # type: ignore[arg-type]
        )  # fmt: skip

    async def start(self, node_id: str | None = None) -> None:
        for n in [node_id] if node_id else self.ids:
            node = JournalNode(self.config(n))
            await node.start()
            self.nodes[n] = node

    async def stop(self, node_id: str) -> None:
        await self.nodes.pop(node_id).close()

    async def close(self) -> None:
        for n in list(self.nodes):
            await self.stop(n)

    def client(self, **kw: int) -> JournalClient:
        return JournalClient([self.addr(n) for n in self.ids], **kw)  # type: ignore[arg-type]

    async def leader(self, log: str, timeout_s: float = 10.0) -> str:
        """The id of the node leading log (waits for one)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            for n, node in self.nodes.items():
                st = node.replica_status(log)
                if st is not None and st.role.value == "leader":
                    return n
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no leader for {log!r}")
