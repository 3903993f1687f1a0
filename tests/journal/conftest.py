"""Fixtures of the journal's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.journal.cluster import InProcessCluster


@pytest.fixture
async def cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Three journal nodes in this process (tests/journal/cluster.py), closed afterwards."""
    cl = InProcessCluster(tmp_path)
    await cl.start()
    yield cl
    await cl.close()
