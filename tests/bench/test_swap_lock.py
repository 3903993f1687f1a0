"""The swap-lock tool runs both ways on a small file and reports every step (nothing is timed)."""

from __future__ import annotations

import os

import pytest

from bench.swap_lock import main

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="Linux's schedstat")


@pytest.mark.parametrize("whole", [False, True])
def test_swap_lock_reports_each_step(whole: bool, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mib", "8", *(["--whole-unmap"] if whole else [])]) == 0
    out = capsys.readouterr().out
    for step in ("copy", "swap_in on the loop", "cleanup", "after"):
        assert f"{step} " in out, out
    assert ("one munmap" in out) == whole
    from kvstore.mvcc import backend

    assert backend.drop_mapped_pages.__name__ == "drop_mapped_pages"  # put back
