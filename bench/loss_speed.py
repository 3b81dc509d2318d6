"""Forward+backward time of gpaco's paco_loss against a dense-mask implementation.

The dense version is the straightforward way to write the same formula: concatenate
centers and samples into one [n, C+M] row, build float masks of the same size for the
self-exclusion and the positive weights, and reduce. Both run in the same process,
interleaved, and the ratio (ours / dense) is reported; below 1.0 means ours is faster.

    python bench/loss_speed.py [--repeats 20] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from gpaco.losses import log_prior_from_counts, paco_loss


def dense_paco_loss(features, labels, logits, n, *, alpha, temperature, beta=1.0, gamma=1.0, log_prior=None):
    C = logits.shape[1]
    M = features.shape[0]
    centers = logits + log_prior if log_prior is not None else logits
    sims = features[:n] @ features.T / temperature
    full = torch.cat([centers, sims], dim=1)
    full = full - full.max(dim=1, keepdim=True).values.detach()
    self_mask = torch.ones(n, C + M, device=features.device)
    self_mask[torch.arange(n), C + torch.arange(n)] = 0.0
    den_weight = torch.cat([torch.ones(n, C, device=features.device), gamma * torch.ones(n, M, device=features.device)], 1)
    den = (full.exp() * self_mask * den_weight).sum(1, keepdim=True)
    log_prob = full - torch.log(den + 1e-12)
    pos = torch.cat([beta * F.one_hot(labels[:n], C).float(),
                     alpha * (labels[:n, None] == labels[None, :]).float()], dim=1) * self_mask
    return (-(pos * log_prob).sum(1) / pos.sum(1)).mean()


def make_inputs(n, K, D, C, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(n + K, D, generator=g), dim=1).to(device)
    labels = torch.randint(0, C, (n + K,), generator=g).to(device)
    logits = torch.randn(n, C, generator=g).to(device)
    prior = log_prior_from_counts(torch.randint(1, 1000, (C,), generator=g).tolist()).to(device)
    return feats, labels, logits, prior


def time_once(fn, feats, labels, logits, prior, n, device):
    f = feats.clone().requires_grad_(True)
    z = logits.clone().requires_grad_(True)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = fn(f, labels, z, n, alpha=0.05, temperature=0.2, log_prior=prior)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, loss.detach(), f.grad


def bench(name, n, K, D, C, repeats, device):
    feats, labels, logits, prior = make_inputs(n, K, D, C, device)
    _, l_ours, g_ours = time_once(paco_loss, feats, labels, logits, prior, n, device)
    _, l_dense, g_dense = time_once(dense_paco_loss, feats, labels, logits, prior, n, device)
    if abs(l_ours.item() - l_dense.item()) > 1e-5 or not torch.allclose(g_ours, g_dense, atol=1e-6, rtol=1e-4):
        raise SystemExit(f"{name}: results disagree: loss {l_ours.item()} vs {l_dense.item()}")
    t_ours, t_dense = [], []
    for _ in range(repeats):  # interleaved so drift on a noisy machine hits both alike
        t_ours.append(time_once(paco_loss, feats, labels, logits, prior, n, device)[0])
        t_dense.append(time_once(dense_paco_loss, feats, labels, logits, prior, n, device)[0])
    mo, md = statistics.median(t_ours), statistics.median(t_dense)
    return dict(name=name, ours_ms=1e3 * mo, dense_ms=1e3 * md, ratio=mo / md)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    rows = [
        bench("ImageNet-LT (n=64, K=8192, D=128, C=1000)", 64, 8192, 128, 1000, args.repeats, args.device),
        bench("iNaturalist (n=64, K=8192, D=128, C=8142)", 64, 8192, 128, 8142, args.repeats, args.device),
    ]
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'scale':45s} {'ours ms':>9s} {'dense ms':>9s} {'ours/dense':>11s}")
    for r in rows:
        print(f"{r['name']:45s} {r['ours_ms']:9.2f} {r['dense_ms']:9.2f} {r['ratio']:11.3f}")
    worst = max(r["ratio"] for r in rows)
    print(f"target: ours/dense <= 1.0 -> {'met' if worst <= 1.0 else 'MISSED'}")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
