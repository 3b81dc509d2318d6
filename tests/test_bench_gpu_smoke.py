"""bench/gpu.sh runs end to end on CPU (tiny settings, eager, one thread): the script a GPU session runs
unprepared must not fail on a typo. The numbers themselves mean nothing on CPU. Every row is
there: ResNet-50 and ViT steps, the two segmentation networks and the end-to-end training with
--gpu-aug off and on (two tools/train.py children); about 30 s on 2 cores."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env


@pytest.mark.slow
def test_gpu_sh_smoke_on_cpu():
    # Compilation on, with a budget that the eager half uses up: every compiled row is skipped
    # and says so (compiling on 2 cores would take minutes), the end-to-end runs still come.
    proc = subprocess.run(["bash", "bench/gpu.sh", "--device", "cpu", "--tiny", "--budget-min", "0.05"], cwd=ROOT,
                          env=subprocess_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=180)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: a target missed, as CPU numbers may
    out = proc.stdout
    for config in ("bare_ce_eager", "ce_eager", "paco_eager", "gpaco_eager", "vit_ce_eager", "vit_gpaco_eager",
                   "seg_deeplabv3plus_r50_eager", "seg_upernet_swin_t_eager", "e2e_gpaco_gpuaug_off",
                   "e2e_gpaco_gpuaug_on"):
        assert f"\n{config} " in out, out
        line = out.split(f"\n{config} ", 1)[1].splitlines()[0]
        assert "failed" not in line and "skipped" not in line, line  # a measured row
    for config in ("ce_compiled", "gpaco_compiled", "seg_upernet_swin_t_compiled"):
        assert re.search(rf"\n{config} +skipped: past the --budget-min 0.05 budget\n", out), out
    assert "GPaCo step (B=2) / CE step (2B)" in out and "PaCo step (B=2) / CE step (2B)" in out
    assert "images/s --gpu-aug on / off" in out
