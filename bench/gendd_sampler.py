"""GenDD evaluation: images/s of gpaco's batched sampler against the original's sampling loop.

GenDD predicts a class by sampling teacher-like features with a diffusion model and applying
the teacher classifier to their mean: S reverse steps (100 on CIFAR), each evaluating the
denoiser (width 1024, 3 adaLN blocks) on ``2 x samples x B x K`` token rows (conditional and
unconditional, for classifier-free guidance 2.0). Both sides below evaluate the denoiser on
exactly those rows at every step (the same number of denoiser evaluations, all rows of a
step batched together):

* original: the original's loop re-implemented as it is structured (for comparison only).
  The rows are built as (half, sample, batch, token) and all go through the plain
  denoiser forward every step, the guided noise computed from the first half
  duplicated; every look-up of the schedule is a per-row gather expanded to [rows, d];
  both halves are advanced; a noise of all rows is drawn each step.
* ours: ``gpaco.losses.gendd.generated_logits``. It evaluates the same function but
  computes the condition and position embeddings once per call, the time embedding and
  the adaLN modulations (they do not depend on x) once per distinct (condition, token)
  row -- the samples share them, the unconditional rows have K distinct ones -- for many
  steps in one large matrix product, the schedule coefficients as scalars; per step it
  runs only the rows' x path (input projection, block MLPs, final layer), and it advances
  only the guided rows.

Both sides are first checked to agree (same weights, same noises), then timed
interleaved in one process, one thread; the ratio is images/s ours / original (the median
of the per-round ratios). The default setting is the CIFAR ResNet-32x4 -> ResNet-8x4
recipe (D = F = 256, d = 64, so K = 4), 100 steps, a batch of 4 images, with the final
evaluation's 5 samples per image (the row with the target) and the validation's 1 (for
information).

    python bench/gendd_sampler.py [--quick] [--batch 4] [--samples 5 1] [--steps 100] [--device cpu|cuda]
                                  [--json OUT]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from gpaco.losses.gendd import DiffusionLoss, generated_logits  # noqa: E402

TARGET = 2.0  # ours / original images/s at the final evaluation's 5 samples (our own target)
WIDTH, DEPTH, TOKEN_DIM = 1024, 3, 64  # the recipes' denoiser
FEATURE_DIM, TEACHER_DIM, CLASSES = 256, 256, 100  # resnet8x4 student, resnet32x4 teacher, CIFAR-100
CFG, TEMPERATURE = 2.0, 1.0  # hard-coded in the original's evaluation


# --------------------------------------------------------------------------- the original's loop

def _extract(arr: np.ndarray, t: torch.Tensor, shape) -> torch.Tensor:
    """The original's schedule look-up: a per-row gather of the float64 array, cast to float32,
    expanded to the batch's shape."""
    res = torch.from_numpy(arr).to(device=t.device)[t].float()
    while len(res.shape) < len(shape):
        res = res[..., None]
    return res.expand(shape)


def original_logits(loss_fn: DiffusionLoss, z, weight, bias, *, num_samples, steps, draws=None):
    """forward_test_stage2 -> DiffLoss.sample -> p_sample_loop -> p_sample, as the original
    structures them. ``draws`` = (init noise [rows/2, d], step noises [S, rows, d]) or None."""
    net, d, device = loss_fn.net, loss_fn.in_channels, z.device
    B, K = z.shape[0], net.num_chunks
    # rows (sample, batch, token), then the same rows with the zero condition
    z_rows = z.unsqueeze(1).repeat(1, K, 1).reshape(B * K, -1).repeat(num_samples, 1)
    index = torch.arange(K, device=device).repeat(B).repeat(num_samples)
    z_rows, index = torch.cat([z_rows, torch.zeros_like(z_rows)]), torch.cat([index, index])
    diffusion = loss_fn.sampling_diffusion(steps)
    timestep_map = torch.tensor(diffusion.timestep_map, device=device)
    with torch.no_grad():
        noise = draws[0] if draws else torch.randn(len(z_rows) // 2, d, device=device)
        x = torch.cat([noise, noise])
        for k, i in enumerate(reversed(range(diffusion.num_timesteps))):
            t = torch.tensor([i] * len(x), device=device)
            out = net.forward_with_cfg(x, timestep_map[t], z_rows, index, CFG)  # the wrapped model: base steps
            eps, v = torch.split(out, d, dim=1)
            min_log = _extract(diffusion.posterior_log_variance_clipped, t, x.shape)
            max_log = _extract(np.log(diffusion.betas), t, x.shape)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            torch.exp(log_variance)  # the variance, computed (and unused) by the original
            pred_xstart = (_extract(diffusion.sqrt_recip_alphas_cumprod, t, x.shape) * x
                           - _extract(diffusion.sqrt_recipm1_alphas_cumprod, t, x.shape) * eps)
            mean = (_extract(diffusion.posterior_mean_coef1, t, x.shape) * pred_xstart
                    + _extract(diffusion.posterior_mean_coef2, t, x.shape) * x)
            step_noise = draws[1][k] if draws else torch.randn_like(x)
            nonzero_mask = (t != 0).float().view(-1, 1)
            x = mean + nonzero_mask * torch.exp(0.5 * log_variance) * step_noise * TEMPERATURE
        tokens = x[: len(x) // 2]
        features = tokens.reshape(num_samples, B, K * d)
        return F.linear(features.mean(0), weight, bias)


# --------------------------------------------------------------------------- bench

def make_setup(batch, device="cpu", seed=0):
    torch.manual_seed(seed)
    loss_fn = DiffusionLoss(TOKEN_DIM, FEATURE_DIM, DEPTH, WIDTH, num_sampling_steps="100",
                            num_chunks=TEACHER_DIM // TOKEN_DIM).eval()
    with torch.no_grad():  # move the zero-initialised layers so that the check below means something
        for p in loss_fn.parameters():
            p.add_(0.02 * torch.randn_like(p))
    z = F.layer_norm(torch.randn(batch, FEATURE_DIM), (FEATURE_DIM,))
    weight, bias = 0.1 * torch.randn(CLASSES, TEACHER_DIM), torch.zeros(CLASSES)
    return loss_fn.to(device), z.to(device), weight.to(device), bias.to(device)


def check_agree(loss_fn, z, weight, bias, num_samples, steps):
    d, rows = loss_fn.in_channels, num_samples * z.shape[0] * loss_fn.net.num_chunks
    S = loss_fn.sampling_diffusion(steps).num_timesteps
    g = torch.Generator().manual_seed(1)
    init, step_noise = torch.randn(rows, d, generator=g), torch.randn(S, 2 * rows, d, generator=g)
    init, step_noise = init.to(z.device), step_noise.to(z.device)
    theirs = original_logits(loss_fn, z, weight, bias, num_samples=num_samples, steps=steps, draws=(init, step_noise))
    ours, _ = generated_logits(loss_fn, z, weight, bias, num_samples=num_samples, steps=steps, cfg=CFG,
                               temperature=TEMPERATURE, init_noise=init, step_noise=step_noise)
    err = (ours - theirs).abs().max().item() / theirs.abs().max().item()
    if not err < 1e-4:
        raise SystemExit(f"gendd sampler: the two samplers disagree (max relative error {err:.3g})")
    return err


def bench(batch, num_samples, steps, repeats, device):
    loss_fn, z, weight, bias = make_setup(batch, device)
    err = check_agree(loss_fn, z, weight, bias, num_samples, steps)

    def timed(fn):
        def run():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0
        return run

    fns = {
        "ours": timed(lambda: generated_logits(loss_fn, z, weight, bias, num_samples=num_samples, steps=steps,
                                               cfg=CFG, temperature=TEMPERATURE)),
        "original": timed(lambda: original_logits(loss_fn, z, weight, bias, num_samples=num_samples, steps=steps)),
    }
    t = C.interleave(fns, repeats, warmup=1)
    ips = {k: batch / C.median(v) for k, v in t.items()}
    ratio = C.paired_ratio(t["original"], t["ours"])  # per-round ratios: robust to the machine's drift
    K = loss_fn.net.num_chunks
    rows = 2 * num_samples * batch * K
    shape = (f"B={batch}, {num_samples} sample(s), K={K}, d={TOKEN_DIM}, W={WIDTH}, L={DEPTH}, S={steps}, "
             f"{rows} denoiser rows/step both, cfg {CFG:g}, "
             f"{device if device != 'cpu' else f'{torch.get_num_threads()} thread(s)'}; "
             f"agree to {err:.1e}; spread {C.spread(t['ours']):.2f}/{C.spread(t['original']):.2f}")
    return C.Row("gendd sampling", f"images/s: batched sampler / original loop, {num_samples} sample(s)",
                 ratio, TARGET if num_samples >= 5 else None, ">=",
                 f"{ips['ours']:.2f} vs {ips['original']:.2f} images/s ({shape})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 steps and 2 repeats (the ratio hardly depends on S)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--samples", type=int, nargs="+", default=[5, 1], help="samples per image (5: final evaluation)")
    p.add_argument("--steps", default=None, help="sampling steps (default 100; quick: 20)")
    p.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 2)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    steps = args.steps or ("20" if args.quick else "100")
    repeats = args.repeats or (2 if args.quick else 3)
    load = C.LoadMeter()
    rows = [bench(args.batch, ns, steps, repeats, args.device) for ns in args.samples]
    info = load.stop()
    print(f"gendd sampler: images/s of the evaluation (sampling + teacher classifier), float32, {args.device}, "
          f"torch {torch.__version__}")
    C.print_rows(rows)
    C.rows_to_json(rows, args.json, {"load": info})
    return C.exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
