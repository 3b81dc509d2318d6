"""bench/gpu.sh runs end to end on CPU (tiny settings, eager, one thread): the script a GPU session runs
unprepared must not fail on a typo. The numbers themselves mean nothing on CPU. Every row is
there: ResNet-50 and ViT steps, the two segmentation networks and the end-to-end training with
--gpu-aug off and on (two tools/train.py children); about 30 s on 2 cores. A GPU session may be cut
short, so each row is printed as it is measured, a step that raises becomes its row's text and a
missing optional package a skipped row (the in-process test, with fake runs)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, subprocess_env

HAVE_SKIMAGE = importlib.util.find_spec("skimage") is not None  # the `bench` extra; the e2e rows need it


@pytest.mark.slow
@pytest.mark.full  # run it before a GPU session; test_rows_stream_and_failures_become_rows checks the rows' logic
def test_gpu_sh_smoke_on_cpu():
    # Compilation on, with a budget that the eager half uses up: every compiled row is skipped
    # and says so (compiling on 2 cores would take minutes), the end-to-end runs still come.
    proc = subprocess.Popen(["bash", "bench/gpu.sh", "--device", "cpu", "--tiny", "--budget-min", "0.05"], cwd=ROOT,
                            env=subprocess_env(PYTHON=sys.executable), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines, running_at_first_row = [], None
    deadline = time.monotonic() + 180
    for line in proc.stdout:  # read as it streams: the first row must come while the run goes on
        lines.append(line)
        if running_at_first_row is None and line.startswith("bare_ce_eager "):
            running_at_first_row = proc.poll() is None
        assert time.monotonic() < deadline, "".join(lines)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) in (0, 1), err[-2000:]  # 1: a target missed, as CPU numbers may
    out = "".join(lines)
    assert running_at_first_row, out  # printed and flushed at once, not at the end (the e2e runs take seconds)
    e2e = ("e2e_gpaco_gpuaug_off", "e2e_gpaco_gpuaug_on")
    for config in ("bare_ce_eager", "ce_eager", "paco_eager", "gpaco_eager", "vit_ce_eager", "vit_gpaco_eager",
                   "seg_deeplabv3plus_r50_eager", "seg_upernet_swin_t_eager", *e2e):
        assert out.count(f"\n{config} ") == 2, out  # as measured, and in the final table
        line = out.split(f"\n{config} ", 1)[1].splitlines()[0]
        if config in e2e and not HAVE_SKIMAGE:
            assert "skipped: skimage not installed (pip install scikit-image" in line, line
            continue
        assert "failed" not in line and "skipped" not in line, line  # a measured row
    for config in ("ce_compiled", "gpaco_compiled", "seg_upernet_swin_t_compiled"):
        assert re.search(rf"\n{config} +skipped: past the --budget-min 0.05 budget\n", out), out
    assert "GPaCo step (B=2) / CE step (2B)" in out and "PaCo step (B=2) / CE step (2B)" in out
    assert ("images/s --gpu-aug on / off" in out) == HAVE_SKIMAGE
    assert "ViT channels_last" in out  # tools/train.py's CPU default


def _gpu_speed(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts bench/ on the path
    spec = importlib.util.spec_from_file_location("bench_gpu_speed", ROOT / "bench" / "gpu_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rows_stream_and_failures_become_rows(monkeypatch, capsys):
    """Fake runs (so: fast): paco's build raises, vit_ce raises in its timed round, skimage is missing;
    every other row is printed before the end-to-end step starts and the script ends normally."""
    g = _gpu_speed(monkeypatch)
    vit_formats = []

    class Fake:
        images_per_step = 4

        def __init__(self, *a, arch="resnet50", **kw):
            self.name, self.calls = (a[0] if a and isinstance(a[0], str) else "bare"), 0
            if arch.startswith("mae_vit"):
                self.name = "vit_" + self.name
                vit_formats.append(a[6] if len(a) > 6 else kw["channels_last"])
            if self.name == "paco":
                raise RuntimeError("build boom")

        def __call__(self):
            self.calls += 1
            if self.name == "vit_ce" and self.calls == 3:  # the two warm-ups pass, the timed round raises
                raise RuntimeError("step boom")
            return 0.01

    for cls in ("BareRun", "EngineRun", "SegRun"):
        monkeypatch.setattr(g, cls, Fake)
    # tools/train.py's memory format: what the bench would pick for the ViT rows, here NCHW to tell it apart
    monkeypatch.setattr(g, "resolve_channels_last", lambda flag, device, amp: False)
    monkeypatch.setitem(sys.modules, "skimage", None)  # as if scikit-image were not installed
    seen = []
    real_missing = g.missing_package

    def spy(module):  # the end-to-end step starts: what has been printed by then
        seen.append(capsys.readouterr().out)
        return real_missing(module)

    monkeypatch.setattr(g, "missing_package", spy)
    monkeypatch.setattr(g.C, "set_threads", lambda n: None)  # it would set this process's threads and env
    code = g.main(["--device", "cpu", "--tiny", "--no-compile"])
    assert code in (0, 1)
    assert len(seen) == 1 and vit_formats == [False, False]
    early, out = seen[0], seen[0] + capsys.readouterr().out
    assert re.search(r"\npaco_eager +failed: RuntimeError: build boom\n", early), early
    assert re.search(r"\nvit_ce_eager +failed: RuntimeError: step boom\n", early), early
    for config in ("bare_ce_eager", "ce_eager", "gpaco_eager", "vit_gpaco_eager", "seg_deeplabv3plus_r50_eager",
                   "seg_upernet_swin_t_eager"):
        assert re.search(rf"\n{config} +10\.0 ", early), early  # measured, printed before the next step
    for config in ("e2e_gpaco_gpuaug_off", "e2e_gpaco_gpuaug_on"):
        assert re.search(rf"\n{config} +skipped: skimage not installed \(pip install scikit-image, or "
                         rf"\.\[bench\]\)\n", out), out
        assert out.count(f"\n{config} ") == 2, out  # as reported and in the final table
    assert "GPaCo step (B=2) / CE step (2B)" in out  # the summary of what was measured
    assert "PaCo step" not in out.replace("GPaCo step", "")  # paco failed: no ratio
