"""IKL / GKL loss, forward+backward: gpaco's closed form against the pairwise formulation.

The pairwise version is the straightforward way to write the loss, and the way it was
first released (re-implemented here for comparison only). It builds the [B, C, C] teacher
gaps, student gaps and pair weights, then reduces ``w * (dt - ds)^2``. gpaco computes the
same number in O(B C) memory: ``1/2 Q sum_j q_j (a_j - m)^2`` per row, derived in
gpaco/losses/kd.py. At the ImageNet scale (B 256, C 1000) each [B, C, C] float32 tensor
is 1 GB.

Two ratios per loss, the pairwise version over ours:
* peak memory of one forward+backward above what the inputs hold. On the CPU this is
  peak RSS, each side in a fresh process with glibc's mmap threshold fixed (as
  bench/memory.py does). On a GPU it is ``max_memory_allocated``.
* time, interleaved in one process, median over the repeats.

Both sides are first checked to agree.

    python bench/kd_loss.py [--quick] [--batch 256] [--classes 1000] [--device cpu|cuda] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TARGET_MEMORY = 50.0  # pairwise peak / ours (our own target)
TARGET_TIME = 5.0  # pairwise time / ours (our own target)

# name -> the recipe settings each loss is timed with
LOSSES = {
    "IKL": dict(temperature=4.0, alpha=1.0, beta=8.0, gamma=1.0, gi=False, t2=100.0, by_weight_sum=False),
    "GKL": dict(temperature=1.0, alpha=1.0, beta=0.5, gamma=0.6, gi=True, t2=1.0, by_weight_sum=True),
}


def pairwise_loss(student, teacher, class_prior, *, temperature, alpha, beta, gamma, gi, t2, by_weight_sum):
    """The [B, C, C] formulation: pair weights, both gap tensors and their squared difference."""
    import torch.nn.functional as F

    q = class_prior if gi else F.softmax(teacher / t2, dim=1)
    q = q.pow(gamma)
    w = q.unsqueeze(2) * q.unsqueeze(1)
    dt = teacher.unsqueeze(2) - teacher.unsqueeze(1)
    ds = student.unsqueeze(2) - student.unsqueeze(1)
    total = 0.25 * (w * (dt - ds) ** 2).sum()
    mse = total / w.sum() if by_weight_sum else total / student.shape[0]
    sce = -(F.softmax(teacher / temperature, dim=1) * F.log_softmax(student / temperature, dim=1)).sum(1).mean()
    return beta * mse + alpha * sce


def ours_loss(student, teacher, class_prior, *, temperature, alpha, beta, gamma, gi, t2, by_weight_sum):
    from gpaco.losses.kd import gkl_loss, ikl_loss

    prior = class_prior if gi else None
    if by_weight_sum:
        return gkl_loss(student, teacher, temperature=temperature, alpha=alpha, beta=beta, gamma=gamma,
                        class_prior=prior, t2=t2)
    return ikl_loss(student, teacher, temperature=temperature, alpha=alpha, beta=beta, class_prior=prior, t2=t2)


IMPLS = {"ours": ours_loss, "pairwise": pairwise_loss}


def make_inputs(batch, classes, device, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (batch,), generator=g)
    teacher = torch.randn(batch, classes, generator=g) * 3
    teacher[torch.arange(batch), y] += 4
    student = torch.randn(batch, classes, generator=g) * 2
    matrix = torch.softmax(torch.randn(classes, classes, generator=g) * 1.5 + 3 * torch.eye(classes), dim=1)
    return student.to(device), teacher.to(device), matrix[y].to(device)


def step(impl, loss, inputs, device):
    """One forward+backward; returns (seconds, loss, student grad)."""
    import torch

    student, teacher, prior = inputs
    s = student.detach().clone().requires_grad_(True)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    value = IMPLS[impl](s, teacher, prior, **LOSSES[loss])
    value.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, value.detach(), s.grad


# --------------------------------------------------------------------------- memory

def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def reset_peak_rss() -> bool:
    """Restart VmHWM at the current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(impl, loss, batch, classes) -> None:
    """CPU peak of one forward+backward above the live inputs, in MiB, printed as JSON."""
    import torch

    C.set_threads(1)
    step(impl, loss, make_inputs(2, 8, "cpu"), "cpu")  # lazy initialisation, outside the measurement
    inputs = make_inputs(batch, classes, "cpu")
    base = rss_mib()
    if not reset_peak_rss():
        base = C.peak_rss_mib()  # no reset: the peak so far stands in as the base
    step(impl, loss, inputs, "cpu")
    del inputs
    torch.set_num_threads(1)
    print(json.dumps({"impl": impl, "loss": loss, "base_mib": base, "peak_mib": C.peak_rss_mib()}))


def cpu_peak_mib(impl, loss, batch, classes) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{impl}:{loss}", "--batch", str(batch),
           "--classes", str(classes)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.splitlines()[-1])
    return max(out["peak_mib"] - out["base_mib"], 1.0 / 1024)  # at least a page-ish: keeps the ratio finite


def cuda_peak_mib(impl, loss, inputs) -> float:
    import torch

    step(impl, loss, inputs, "cuda")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(impl, loss, inputs, "cuda")
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# --------------------------------------------------------------------------- main

def bench(loss, batch, classes, repeats, device):
    import torch

    inputs = make_inputs(batch, classes, device)
    _, l_ours, g_ours = step("ours", loss, inputs, device)
    _, l_pair, g_pair = step("pairwise", loss, inputs, device)
    if not (torch.allclose(l_ours, l_pair, rtol=1e-4, atol=1e-6)
            and torch.allclose(g_ours, g_pair, rtol=1e-3, atol=1e-3 * g_pair.abs().max().item())):
        raise SystemExit(f"{loss}: the two formulations disagree: loss {l_ours.item()} vs {l_pair.item()}")
    del g_ours, g_pair
    if device == "cuda":
        mem = {impl: cuda_peak_mib(impl, loss, inputs) for impl in IMPLS}
    else:
        mem = {impl: cpu_peak_mib(impl, loss, batch, classes) for impl in IMPLS}
    # the agreement check above was both sides' warm-up
    t = C.interleave({impl: (lambda impl=impl: step(impl, loss, inputs, device)[0]) for impl in IMPLS},
                     repeats, warmup=0)
    ms = {impl: 1e3 * C.median(t[impl]) for impl in IMPLS}
    shape = f"B={batch}, C={classes}, {device}, {torch.get_num_threads()} thread(s)"
    return [
        C.Row("kd loss", f"{loss} peak memory: pairwise / closed form", mem["pairwise"] / mem["ours"], TARGET_MEMORY,
              ">=", f"{mem['pairwise']:.0f} vs {mem['ours']:.1f} MiB above the inputs ({shape})"),
        C.Row("kd loss", f"{loss} fwd+bwd time: pairwise / closed form", ms["pairwise"] / ms["ours"], TARGET_TIME,
              ">=", f"{ms['pairwise']:.0f} vs {ms['ours']:.2f} ms, median of {repeats} ({shape})"),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (the pairwise side takes seconds per call)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=None, help="default 5 (quick: 2)")
    p.add_argument("--losses", nargs="+", choices=sorted(LOSSES), default=sorted(LOSSES))
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        impl, loss = args.child.split(":")
        child(impl, loss, args.batch, args.classes)
        return 0
    import torch

    device = args.device or "cpu"
    if device == "cpu":
        C.set_threads(1)
    repeats = args.repeats or (2 if args.quick else 5)
    load = C.LoadMeter()
    rows = []
    for loss in args.losses:
        rows += bench(loss, args.batch, args.classes, repeats, device)
    info = load.stop()
    print(f"kd loss: forward+backward at B={args.batch}, C={args.classes}, float32, {device}, torch {torch.__version__}")
    C.print_rows(rows)
    C.rows_to_json(rows, args.json, {"load": info})
    return C.exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
