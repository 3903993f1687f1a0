"""`kvstore bench member-cpu` and `kvstore bench journal-append`: one short run of each, against a
baseline tree (this checkout itself), reports a figure per workload and tree (proves the tools; not timed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import journal_bench, member_cpu

REPO = Path(__file__).resolve().parents[2]


def test_member_cpu_reports_both_trees(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["--workloads", "put,range-s", "--rounds", "1", "--requests", "256", "--clients", "8",
            "--data-dir", str(tmp_path), "--baseline-tree", str(REPO)]  # fmt: skip
    assert member_cpu.main(argv) == 0
    out = capsys.readouterr().out
    for workload in ("put", "range-s"):
        for tree in ("baseline", "this"):
            row = next(line for line in out.splitlines() if line.startswith(f"| {workload} | {tree} |"))
            assert float(row.split("|")[3].split()[0]) > 0  # CPU µs per request
        assert f"{workload}: CPU per op this / baseline = " in out


def test_journal_append_reports_cpu_and_syscalls(tmp_path: Path) -> None:
    out = tmp_path / "points.json"
    argv = ["--concurrency", "1,4", "--seconds", "0.5", "--warmup-s", "0.2", "--data-dir", str(tmp_path),
            "--json", str(out)]  # fmt: skip
    assert journal_bench.journal_append_main(argv) == 0
    points = json.loads(out.read_text())
    assert [(p["tree"], p["fsync"], p["entry_bytes"], p["concurrency"]) for p in points] == [
        ("this", "always", 256, 1), ("this", "always", 256, 4),
    ]  # fmt: skip
    for p in points:
        assert p["appends"] > 0 and p["nodes_cpu_us"] > 0 and p["leader_syscalls"] > 0


@pytest.mark.parametrize("tool", ["compare", "floor", "go", "member-cpu", "journal-append", "scale"])
def test_every_bench_tool_starts_from_the_installed_command(tool: str, tmp_path: Path) -> None:
    """As a user runs it: the `kvstore` console script, outside the checkout (no test module on sys.path)."""
    kvstore = shutil.which("kvstore")
    if kvstore is None:
        pytest.skip("the kvstore command is not installed (pip install -e .)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([kvstore, "bench", tool, "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
