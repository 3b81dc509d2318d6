"""Two CPU processes under torchrun (gloo): queue gathering and shuffle-BN across ranks.

One torchrun launch (~10 s) serves every test of the module.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_worker

WORKER = Path(__file__).with_name("ddp_worker.py")
NPROC = 2
LOCAL_BATCH = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}",
           str(WORKER), str(out_dir)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"torchrun timed out after 120 s\nstdout:\n{err.stdout}\nstderr:\n{err.stderr}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode})\nstdout:\n{proc.stdout[-3000:]}\n" \
                                 f"stderr:\n{proc.stderr[-6000:]}"
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(NPROC)]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("method", ["paco", "gpaco"])
def test_queue_identical_and_holds_every_rank_keys(ranks, method):
    res = [r[method] for r in ranks]
    assert all(r["num_anchors"] == (1 if method == "paco" else 2) * LOCAL_BATCH for r in res)
    # identical queues on every rank
    for r in res[1:]:
        assert torch.equal(r["queue"], res[0]["queue"])
        assert torch.equal(r["queue_labels"], res[0]["queue_labels"])
        assert torch.equal(r["queue_before"], res[0]["queue_before"])
    global_batch = LOCAL_BATCH * NPROC
    assert all(r["ptr"].item() == global_batch for r in res)
    # slot block `rank` holds that rank's keys and labels, in rank order
    for rank, r in enumerate(res):
        sl = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        assert torch.equal(res[0]["queue"][sl], r["keys"])
        assert torch.equal(res[0]["queue_labels"][sl], r["labels"])
    assert not torch.equal(res[0]["keys"], res[1]["keys"])  # different data per rank
    # the rest of the queue is untouched
    assert torch.equal(res[0]["queue"][global_batch:], res[0]["queue_before"][global_batch:])
    assert torch.equal(res[0]["queue_labels"][global_batch:], res[0]["labels_before"][global_batch:])
    # DDP kept the trained classifier in sync
    assert torch.allclose(res[0]["fc_weight"], res[1]["fc_weight"], atol=1e-6)


@pytest.mark.slow
@pytest.mark.distributed
def test_rescom_balanced_queue_gathers_every_rank(ranks):
    res = [r["rescom"] for r in ranks]
    for r in res[1:]:
        assert torch.equal(r["keys"], res[0]["keys"]) and torch.equal(r["ptr"], res[0]["ptr"])
    for rank, r in enumerate(res):
        assert torch.equal(res[0]["keys"][rank], r["view1"])  # class `rank` holds that rank's view-1 rows
        assert torch.equal(r["snapshot"], r["keys_before"])  # the loss mined the queue as it was
    assert res[0]["ptr"].tolist() == [0] * 5  # each written class wrapped around its K slots exactly once
    assert torch.equal(res[0]["keys"][NPROC:], res[0]["keys_before"][NPROC:])  # other classes untouched


@pytest.mark.slow
@pytest.mark.distributed
def test_paco_keys_return_to_their_rank(ranks):
    for r in ranks:
        assert torch.allclose(r["paco_key_order"]["keys"], r["paco_key_order"]["expected"], atol=1e-5)


@pytest.mark.slow
@pytest.mark.distributed
def test_batch_shuffle_across_ranks(ranks):
    sh = [r["shuffle"] for r in ranks]
    for s in sh:
        assert torch.equal(s["restored"], s["x"])  # exact order restored
        assert torch.equal(s["unshuffle_idx"], sh[0]["unshuffle_idx"])  # rank 0's permutation everywhere
    global_x = torch.cat([s["x"] for s in sh])
    perm = torch.argsort(sh[0]["unshuffle_idx"])
    chunk = global_x.shape[0] // NPROC
    for rank, s in enumerate(sh):
        assert torch.equal(s["shuffled"], global_x[perm[rank * chunk:(rank + 1) * chunk]])
    # the shuffle really mixed the ranks: rank 0 received some of rank 1's samples
    own = set(sh[0]["x"][:, 0].tolist())
    assert not set(sh[0]["shuffled"][:, 0].tolist()) <= own
    assert torch.equal(torch.cat([s["shuffled"] for s in sh]).sort(dim=0).values, global_x)
    assert all(s["sum"].item() == sum(range(1, NPROC + 1)) for s in sh)
    assert all(s["agree"] == [True, False] for s in sh)  # rank 1's flag reaches every rank


# ----------------------------------------------------------------------------- --device-batch

DEVICE_WORKER = Path(__file__).with_name("device_batch_worker.py")
DEVICE_RUNS = {"1 process x 4 groups": (1, "8"), "2 processes x 2 groups": (2, "8"), "4 processes": (4, "none")}


@pytest.fixture(scope="module")
def device_runs(tmp_path_factory):
    """The same two steps on a global batch of 32 as 4 processes of 8 (the original's layout,
    no --device-batch), 2 processes x 2 groups of 8 and 1 process x 4 groups of 8."""
    out_dir = tmp_path_factory.mktemp("device_batch")
    results = {}
    for name, (nproc, device_batch) in DEVICE_RUNS.items():
        out = out_dir / f"{nproc}.pt"
        run_worker(DEVICE_WORKER, out, device_batch, nproc=nproc)
        results[name] = torch.load(out, weights_only=True)
    return results


def _close(a: torch.Tensor, b: torch.Tensor, scale: float, what: str) -> None:
    """Equal within float32 rounding: |a - b| <= 1e-5 x scale (scale: the reference's magnitude)."""
    if not b.dtype.is_floating_point:
        assert torch.equal(a, b), what
        return
    err = (a.double() - b.double()).abs().max().item()
    assert err <= 1e-5 * scale, f"{what}: max error {err:.3g} > 1e-5 x {scale:.3g}"


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("method", ["paco", "gpaco", "multitask"])
@pytest.mark.parametrize("run", ["1 process x 4 groups", "2 processes x 2 groups"])
def test_device_batch_equals_one_process_per_device(device_runs, method, run):
    """--device-batch 8 on 1 or 2 processes trains exactly what 4 processes of 8 train: losses
    (global and per virtual device), DDP-averaged gradients, parameters, BatchNorm running
    statistics (rank 0's, as DDP broadcasts them) and queue, over two steps (the second
    contrasts against the first's keys in the queue)."""
    ref, got = device_runs["4 processes"][method], device_runs[run][method]
    for step in range(2):
        _close(got["loss"][step], ref["loss"][step], ref["loss"][step].abs().item(), f"step {step} loss")
        dev_ref = ref["device_losses"][step]
        assert got["device_losses"][step].shape == dev_ref.shape == (4,)
        _close(got["device_losses"][step], dev_ref, dev_ref.abs().max().item(), f"step {step} per-device losses")
        grads = ref["grads"][step]
        assert got["grads"][step].keys() == grads.keys()
        # A Linear bias followed by BatchNorm (PaCo's projection) has a zero gradient up to
        # rounding noise, so every gradient is compared at the scale of the step's largest one.
        scale = max(g.abs().max().item() for g in grads.values())
        for name, g in grads.items():
            _close(got["grads"][step][name], g, scale, f"step {step} grad {name}")
    assert got["state"].keys() == ref["state"].keys()
    for name, v in ref["state"].items():
        scale = v.abs().max().item() if v.dtype.is_floating_point else 1.0
        _close(got["state"][name], v, max(scale, 1e-3), name)
    assert any(".running_var" in k for k in ref["state"]) and "queue.features" in ref["state"]


@pytest.mark.distributed
def test_ranks_with_different_split_lists_stop_at_once_naming_rank_and_file(demo_data, tmp_path):
    """Rank 1's list has one line less: both ranks stop before training with one error line
    (not after --dist-timeout, 600 s, with gloo timeout messages)."""
    import time

    from conftest import subprocess_env

    lines = (demo_data / "val_small.txt").read_text().splitlines()
    data = tmp_path / "lists"
    data.mkdir()
    os.symlink(demo_data / "images", data / "images")  # the images are shared; the lists differ
    (data / "val.txt").write_text("\n".join(lines) + "\n")
    (data / "val_rank1.txt").write_text("\n".join(lines[:-1]) + "\n")
    env = subprocess_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}",
           str(WORKER.with_name("rank_data_worker.py")), str(data), str(tmp_path / "run")]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    elapsed = time.time() - t0
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("[rank ") and "error:" in ln]
    assert len(errors) == NPROC, proc.stderr[-4000:]
    for ln in errors:
        assert (f"--train-list {data / 'val_rank1.txt'} differs between ranks: samples {len(lines) - 1} on rank 1 "
                f"vs {len(lines)} on rank 0") in ln, ln
    assert "Traceback" not in proc.stderr.split("error:")[0]
    assert elapsed < 120


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("method", ["paco", "gpaco"])
def test_broadcast_buffers_gives_every_rank_rank0_statistics(ranks, method):
    """After a step on rank-specific data the BatchNorm statistics differ by rank; the end of
    each training epoch broadcasts rank 0's (what evaluation and the checkpoint use)."""
    res = [r[method] for r in ranks]
    assert not torch.equal(res[0]["bn_mean"], res[1]["bn_mean"])
    for r in res:
        assert torch.equal(r["bn_mean_broadcast"], res[0]["bn_mean"])
