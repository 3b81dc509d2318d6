"""bench/gpu.sh runs end to end on CPU (tiny settings, eager): the script a GPU session runs
unprepared must not fail on a typo. The numbers themselves mean nothing on CPU."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env


@pytest.mark.slow
def test_gpu_sh_smoke_on_cpu():
    proc = subprocess.run(["bash", "bench/gpu.sh", "--device", "cpu", "--tiny", "--no-compile"], cwd=ROOT,
                          env=subprocess_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=180)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: a target missed, as CPU numbers may
    out = proc.stdout
    for config in ("bare_ce_eager", "ce_eager", "paco_eager", "gpaco_eager", "vit_ce_eager", "vit_gpaco_eager"):
        assert f"\n{config} " in out, out
    assert "GPaCo step (B=2) / CE step (2B)" in out and "PaCo step (B=2) / CE step (2B)" in out
