"""Stop signals delivered twice: SLURM signals every process of the job step and torchrun
forwards its own SIGTERM to each worker, so a worker gets the same signal twice within
milliseconds. That is one request (checkpoint, exit 0), not "stop now"."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpaco.checkpoint import load_checkpoint
from gpaco.engine.preemption import FAULT_ENV, REPEAT_GRACE_S, FaultInjector, PreemptionHandler

from conftest import subprocess_env
from test_reliability import ROOT, TRAIN, assert_same_run, run_args


@pytest.fixture
def recorded():
    """SIGTERM/SIGUSR1 go to a recorder outside the handler, so "stop now" shows instead of killing pytest."""
    got = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signal.Signals(signum).name))
           for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield got
    for s, h in old.items():
        signal.signal(s, h)


def _deliver(sig):
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # Python runs the handler at the next bytecode boundary


def test_repeat_within_grace_is_the_same_request(recorded):
    assert 5 <= REPEAT_GRACE_S <= 10
    with PreemptionHandler() as h:
        _deliver(signal.SIGTERM)
        _deliver(signal.SIGTERM)
        assert h.signal_name == "SIGTERM" and recorded == []
        assert signal.getsignal(signal.SIGTERM) == h._handle  # still installed


def test_different_signal_stops_at_once(recorded):
    with PreemptionHandler() as h:
        _deliver(signal.SIGTERM)
        _deliver(signal.SIGUSR1)
        assert h.signal_name == "SIGTERM" and recorded == ["SIGUSR1"]
        assert signal.getsignal(signal.SIGTERM) != h._handle  # previous handlers are back


def test_repeat_after_grace_stops_at_once(recorded):
    with PreemptionHandler(grace_s=0.05) as h:
        _deliver(signal.SIGTERM)
        time.sleep(0.1)
        _deliver(signal.SIGTERM)
        assert h.signal_name == "SIGTERM" and recorded == ["SIGTERM"]


def test_slurmterm_fault_kind_parses():
    assert FaultInjector("rank0_slurmterm_step3", rank=0).faults == {3: "slurmterm"}


def _torchrun(*argv, timeout=240, **extra_env):
    # Own session: the injected SIGTERM to torchrun's process group must not reach pytest.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TRAIN, *argv]
    return subprocess.run(cmd, env=subprocess_env(**extra_env), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, start_new_session=True)


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_double_sigterm_checkpoints_then_resume_is_exact(demo_data, tmp_path):
    """At micro-batch 10 (epoch 1 step 3) rank 0 sends SIGTERM to torchrun's process group
    (torchrun forwards it to each worker) and 5 ms later SIGTERM to each worker again. Both
    workers checkpoint and exit 0; --resume auto ends as the uninterrupted run."""
    straight_out, out = tmp_path / "straight", tmp_path / "run"
    proc = _torchrun(*run_args(demo_data, straight_out, "--workers", "0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _torchrun(*run_args(demo_data, out, "--workers", "0"), **{FAULT_ENV: "rank0_slurmterm_step10"})
    log = proc.stdout + proc.stderr
    # torchrun itself exits 1 after a SIGTERM (its own behaviour); the workers must exit 0.
    assert "preempted (SIGTERM): checkpoint saved at epoch 2 step 3/7" in proc.stdout, log[-3000:]
    assert "forcefully exiting" not in log and "exitcode: -15" not in log, log[-3000:]
    ckpt = load_checkpoint(out / "checkpoint.pth")
    assert (ckpt["epoch"], ckpt["step"], ckpt["world_size"]) == (1, 3, 2)
    assert not (out / "run.lock").exists()  # the run ended cleanly, not killed mid-way
    proc = _torchrun(*run_args(demo_data, out, "--workers", "0", "--resume", "auto"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(straight_out, out)


def test_slurm_sh_makes_torchrun_forward_sigusr1_and_wait_for_the_save():
    """Run under SLURM only, so checked statically: torchrun handles (and forwards) SIGUSR1
    instead of dying of it, and waits longer than its default 30 s for the workers."""
    text = (ROOT / "sh" / "slurm.sh").read_text()
    env = dict(re.findall(r'^export (PET_SIGNALS_TO_HANDLE|TORCH_ELASTIC_SHUTDOWN_TIMEOUT)="\$\{\w+:-([^}]*)\}"',
                          text, re.M))
    assert {"SIGTERM", "SIGUSR1"} <= set(env["PET_SIGNALS_TO_HANDLE"].split(","))
    assert int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) > 30
    assert 'export TORCHELASTIC_SIGNALS_TO_HANDLE="$PET_SIGNALS_TO_HANDLE"' in text
