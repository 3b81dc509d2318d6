"""Gaussian diffusion over feature vectors: the cosine noise schedule, timestep respacing,
and the per-step maths of training (noise MSE + variational bound) and ancestral sampling.

This is the improved-DDPM formulation (Nichol & Dhariwal, 2021) as GenDD uses it:

* **Schedule.** ``alpha_bar(u) = cos((u + 0.008) / 1.008 * pi / 2)^2`` on ``u = i / T``,
  ``beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999)`` for ``T = 1000``.
  The clip bites only at the last step (``beta_999 = 0.999``, ``alpha_bar_999 = 2.4e-9``),
  which makes the first reverse step stiff: ``x - eps_hat`` is multiplied by about
  ``1 / sqrt(alpha)`` of the first respaced step (316 for 100 steps, 3493 for 10).
* **Respacing.** A process over a subset ``tau_0 < ... < tau_{S-1}`` of the base steps keeps
  the base ``alpha_bar`` at those steps, so ``beta'_j = 1 - alpha_bar(tau_j) / alpha_bar(tau_{j-1})``.
  Every array below is indexed by the respaced step ``j``; the denoiser is given the base
  step ``tau_j`` (``timestep_map[j]``), not ``j``. Training uses all 1000 steps (``tau_j = j``).
* **Learned variance.** The denoiser outputs ``(eps_hat, v)``. The reverse variance
  interpolates in log space between the clipped posterior variance and ``beta``:
  ``log sigma^2 = f log beta + (1 - f) log sigma~^2`` with ``f = (v + 1) / 2`` (``v`` is used raw).
* **Variational term.** ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` in bits per dimension
  for ``t > 0``, and at ``t = 0`` the negative log-likelihood of the image-style discretised
  Gaussian (bins of +-1/255, open-ended below -0.999 and above 0.999, the tanh approximation
  of the normal CDF). GenDD applies it to raw features unchanged, so we keep it as is.

All arrays are float64 numpy, computed once. A look-up casts the float64 value to the
compute dtype (float32 for float32/half inputs, float64 for float64 inputs), which is where
the numbers of a float32 run come from.

Shapes: ``x``, ``eps``, ``v`` are [N, d]; ``t`` is [N] (integer, respaced index) or a Python int.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "cosine_betas", "space_timesteps", "GaussianDiffusion", "normal_kl", "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
]

TRAIN_STEPS = 1000  # the base process of every GenDD recipe
_LOG2 = math.log(2.0)


# --------------------------------------------------------------------------- schedule

def cosine_betas(num_timesteps: int = TRAIN_STEPS, max_beta: float = 0.999) -> np.ndarray:
    """The cosine schedule's betas [T] (float64), each clipped at ``max_beta``."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
                     for i in range(num_timesteps)], dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: Union[str, int, Sequence[int]]) -> set:
    """The base steps a respaced process keeps.

    ``section_counts``: ``"100"`` (or ``100``) keeps 100 evenly strided steps of ``[0, T)``,
    always including ``0`` and ``T - 1``; ``"10,15,20"`` splits ``[0, T)`` into three equal
    sections and strides each; ``"ddimN"`` keeps ``range(0, T, i)`` for the stride ``i`` giving N
    steps. ``""`` keeps every step. The stride is accumulated in floating point and rounded
    with Python's ``round`` (half to even), which decides the maps exactly
    (``"100"`` gives 0, 10, ..., 50, 61, ...).
    """
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    elif isinstance(section_counts, str):
        text = section_counts.strip()
        if text == "":
            return set(range(num_timesteps))
        if text.startswith("ddim"):
            desired = int(text[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot take exactly {desired} steps of {num_timesteps} with an integer stride")
        try:
            section_counts = [int(x) for x in text.split(",")]
        except ValueError:
            raise ValueError(f"timestep respacing must be 'N', 'N1,N2,...' or 'ddimN', "
                             f"got {section_counts!r}") from None
    section_counts = list(section_counts)
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"cannot take {count} steps from a section of {size} steps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        pos = 0.0
        for _ in range(count):
            steps.append(start + round(pos))
            pos += stride
        start += size
    return set(steps)


# --------------------------------------------------------------------------- likelihood terms

def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + ((mean1 - mean2) ** 2) * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log P(x) of a Gaussian discretised into bins of width 2/255, elementwise, in nats.

    The bins are the 8-bit image bins of [-1, 1]: the lowest bin (``x < -0.999``) extends to
    -inf and the highest (``x > 0.999``) to +inf. Each log is clamped at 1e-12.
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


# --------------------------------------------------------------------------- the process

class GaussianDiffusion:
    """A (respaced) diffusion process: its float64 arrays and the per-step maths.

    Args:
        base_betas: the betas of the base process [T] (e.g. :func:`cosine_betas`).
        use_timesteps: the base steps to keep (:func:`space_timesteps`); None keeps all.

    Attributes (float64 numpy, [S] with S the number of kept steps): ``betas``, ``log_betas``,
    ``alphas_cumprod``, ``alphas_cumprod_prev``, ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``, ``sqrt_recip_alphas_cumprod``,
    ``sqrt_recipm1_alphas_cumprod``, ``posterior_variance``, ``posterior_log_variance_clipped``
    (its first entry copies the second: the posterior variance at step 0 is 0),
    ``posterior_mean_coef1``, ``posterior_mean_coef2``; ``timestep_map`` [S] (int64): the
    base step the denoiser sees at each respaced step.
    """

    ARRAYS = ("betas", "log_betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
              "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
              "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
              "posterior_mean_coef2")

    def __init__(self, base_betas: np.ndarray, use_timesteps: Optional[Iterable[int]] = None) -> None:
        base_betas = np.asarray(base_betas, dtype=np.float64)
        if base_betas.ndim != 1 or len(base_betas) < 2 or not ((base_betas > 0) & (base_betas <= 1)).all():
            raise ValueError("base_betas must be a 1-D array of at least 2 values in (0, 1]")
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        keep = set(range(len(base_betas))) if use_timesteps is None else set(int(s) for s in use_timesteps)
        if not keep or min(keep) < 0 or max(keep) >= len(base_betas):
            raise ValueError(f"use_timesteps must be a non-empty subset of [0, {len(base_betas)})")
        # Respaced betas from the kept steps' alpha_bar (for all steps this reproduces the base
        # betas up to rounding, ~1e-16, and those recomputed betas are the ones used).
        betas, timestep_map, last = [], [], 1.0
        for i, alpha_cumprod in enumerate(base_alphas_cumprod):
            if i in keep:
                betas.append(1.0 - alpha_cumprod / last)
                last = alpha_cumprod
                timestep_map.append(i)
        self.num_base_timesteps = len(base_betas)
        self.timestep_map = np.array(timestep_map, dtype=np.int64)
        self._set_arrays(np.array(betas, dtype=np.float64))
        self._torch_cache: Dict[tuple, Tensor] = {}

    @classmethod
    def cosine(cls, respacing: Union[str, int, Sequence[int], None] = "",
               num_timesteps: int = TRAIN_STEPS) -> "GaussianDiffusion":
        """The cosine process over ``num_timesteps`` base steps, respaced by ``respacing``
        (``""``/None: every step; ``"100"``: 100 steps; see :func:`space_timesteps`)."""
        keep = None if respacing in (None, "") else space_timesteps(num_timesteps, respacing)
        return cls(cosine_betas(num_timesteps), keep)

    def _set_arrays(self, betas: np.ndarray) -> None:
        self.betas = betas
        self.log_betas = np.log(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # log(0) at step 0: clip it to the next step's value
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    @property
    def num_timesteps(self) -> int:
        """Number of (respaced) steps S."""
        return len(self.betas)

    def __repr__(self) -> str:
        return f"GaussianDiffusion(steps={self.num_timesteps} of {self.num_base_timesteps})"

    # ----------------------------------------------------------------------- look-ups

    @staticmethod
    def compute_dtype(x: Tensor) -> torch.dtype:
        """float64 for float64 inputs, else float32 (the original casts every look-up to float32)."""
        return torch.float64 if x.dtype == torch.float64 else torch.float32

    def _table(self, name: str, device: torch.device) -> Tensor:
        key = (name, str(device))
        table = self._torch_cache.get(key)
        if table is None:
            source = self.timestep_map if name == "timestep_map" else getattr(self, name)
            table = self._torch_cache[key] = torch.as_tensor(source).to(device)
        return table

    def extract(self, name: str, t: Tensor, dtype: torch.dtype) -> Tensor:
        """``array[t]`` as [N, 1] in ``dtype`` (the float64 value rounded once), for [N, d] maths."""
        return self._table(name, t.device)[t].to(dtype).unsqueeze(-1)

    def scalar(self, name: str, j: int, dtype: torch.dtype) -> float:
        """``array[j]`` as a Python float rounded to ``dtype``: the coefficient of a step where every
        row shares ``j`` (a Python scalar keeps the step free of host-device traffic)."""
        value = float(getattr(self, name)[j])
        return float(np.float32(value)) if dtype != torch.float64 else value

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The base steps the denoiser sees for respaced indices ``t``."""
        return self._table("timestep_map", t.device)[t]

    # ----------------------------------------------------------------------- maths

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise`` [N, d]."""
        dtype = self.compute_dtype(x_start)
        return (self.extract("sqrt_alphas_cumprod", t, dtype) * x_start
                + self.extract("sqrt_one_minus_alphas_cumprod", t, dtype) * noise)

    def q_posterior_mean(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Mean of q(x_{t-1} | x_t, x_0) [N, d]."""
        dtype = self.compute_dtype(x_t)
        return (self.extract("posterior_mean_coef1", t, dtype) * x_start
                + self.extract("posterior_mean_coef2", t, dtype) * x_t)

    def p_mean_variance(self, eps: Tensor, v: Tensor, x_t: Tensor, t: Tensor) -> Dict[str, Tensor]:
        """The reverse step's Gaussian from the denoiser's ``(eps, v)`` at ``x_t``.

        Returns ``mean``, ``log_variance`` and ``pred_xstart`` [N, d] (no clipping of x_0).
        """
        dtype = self.compute_dtype(x_t)
        min_log = self.extract("posterior_log_variance_clipped", t, dtype)
        max_log = self.extract("log_betas", t, dtype)
        frac = (v + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = (self.extract("sqrt_recip_alphas_cumprod", t, dtype) * x_t
                       - self.extract("sqrt_recipm1_alphas_cumprod", t, dtype) * eps)
        return {"mean": self.q_posterior_mean(pred_xstart, x_t, t), "log_variance": log_variance,
                "pred_xstart": pred_xstart}

    def vb_terms_bpd(self, eps: Tensor, v: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The variational bound term per row [N], in bits per dimension: the posterior KL for
        ``t > 0``, the discretised-Gaussian NLL of ``x_start`` for ``t = 0``."""
        dtype = self.compute_dtype(x_t)
        true_mean = self.q_posterior_mean(x_start, x_t, t)
        true_log_variance = self.extract("posterior_log_variance_clipped", t, dtype)
        out = self.p_mean_variance(eps, v, x_t, t)
        kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"]).mean(dim=1) / _LOG2
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"]).mean(dim=1) / _LOG2
        return torch.where(t == 0, nll, kl)

    def training_terms(self, model_output: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor,
                       noise: Tensor) -> Dict[str, Tensor]:
        """Per-row loss terms [N] from the denoiser's output [N, 2d] at ``x_t``.

        ``mse`` = mean_d (noise - eps_hat)^2 trains eps_hat. ``vb`` (bits) takes its mean from the
        *detached* eps_hat, so it trains only the variance output v. ``loss = mse + vb``.
        """
        d = x_t.shape[1]
        if model_output.shape != (x_t.shape[0], 2 * d):
            raise ValueError(f"the denoiser must output [N, 2d] = {(x_t.shape[0], 2 * d)} (noise and variance), "
                             f"got {tuple(model_output.shape)}")
        eps, v = model_output[:, :d], model_output[:, d:]
        vb = self.vb_terms_bpd(eps.detach(), v, x_start, x_t, t)
        mse = ((noise - eps) ** 2).mean(dim=1)
        return {"loss": mse + vb, "mse": mse, "vb": vb}
