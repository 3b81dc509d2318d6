"""Generative Distribution Distillation (GenDD, arXiv 2507.14503): distillation as conditional
generation of the teacher's feature, given the student's.

The pieces, in the order a training step uses them (the method, ``gpaco/methods/gendd.py``,
composes them):

1. :func:`contract` -- Distribution Contraction: the generated target is pulled toward the
   teacher classifier's weight row of the label, ``t~ = (1 - s) f_t + s W_t[y]`` (soft labels:
   ``s (y @ W_t)``). ``W_t`` is the raw classifier weight, on whatever scale it has.
2. :func:`draw_mixup` / :func:`mix_features` -- mixup of the condition and the target in
   feature space with one ``m ~ Beta(beta, beta)`` and one permutation per batch.
3. :func:`split_tokens` -- Split Tokenization: the target [B, D] is cut into K = D / d
   contiguous d-dim tokens; each token is a separate diffusion sample with the sample's
   condition and its token index (a learned position embedding). Rows are repeated M times
   (``repeats``), each copy drawing its own step and noise.
4. :func:`drop_condition` -- rows whose uniform draw is below ``p`` get the null condition
   (the zero vector), which trains the unconditional model classifier-free guidance needs.
5. :class:`DiffusionLoss` -- the denoiser :class:`DiffusionMLP` (an MLP with adaLN over 1-D
   tokens) and the diffusion loss of ``gpaco/losses/diffusion.py`` (noise MSE + variational
   bound in bits) on a 1000-step cosine process.

At test time :meth:`DiffusionLoss.sample` runs respaced DDPM ancestral sampling with
classifier-free guidance, and :func:`generated_logits` applies the frozen teacher classifier
to the mean of the sampled features.

Every random draw (steps, noises, the permutation and ``m``, the drop uniforms, the sampler's
noises) can be passed in; when it is not, it is drawn from ``generator`` (a
``torch.Generator``, or the global generator when None).

**Sampling cost.** Every reverse step evaluates the denoiser on ``2 x num_samples x B x K``
rows (conditional and unconditional), all in one batched call per step. Each part is
computed only as often as it differs: the condition and position embeddings once per call;
the time embedding and the adaLN modulations (which depend on the step and the condition,
not on x) once per distinct (condition, token) row -- the ``num_samples`` copies share them,
the unconditional rows have only K distinct ones -- and for many steps in one large matrix
product; the schedule coefficients as scalars. Only the per-row x path (input projection,
block MLPs, final layer) runs per step, and the unconditional rows' own trajectory, which
guidance never reads, is not advanced. The numbers are those of the plain per-row
evaluation up to float rounding; bench/gendd_sampler.py measures the gain.

The parameter names are the original's (``net.time_embed.mlp.0.weight``,
``net.res_blocks.1.adaLN_modulation.1.bias``, ``net.final_layer.linear.weight``, ...), so
its checkpoints load as they are.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .diffusion import TRAIN_STEPS, GaussianDiffusion
from .paco import host_readable

__all__ = [
    "TimestepEmbedder", "ResBlock", "FinalLayer", "DiffusionMLP", "DiffusionLoss",
    "contract", "draw_mixup", "mix_features", "token_rows", "split_tokens", "merge_tokens", "drop_condition",
    "sample_features", "generated_logits",
]

Steps = Union[str, int]

# The sampler stores the adaLN outputs of this many bytes at a time (see DiffusionLoss._modulations).
MODULATION_BUDGET_BYTES = 256 * 2**20


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _randn(shape, generator: Optional[torch.Generator], device, dtype) -> Tensor:
    """Standard normal draws from ``generator`` (drawn on its device, then moved)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift``."""
    return x * (1 + scale) + shift


# --------------------------------------------------------------------------- denoiser

class TimestepEmbedder(nn.Module):
    """Integer diffusion step -> [N, W]: a 256-d sinusoid (cos half first, frequencies
    ``10000^(-j/128)``, the raw step 0..999 as argument) through Linear-SiLU-Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, dtype: torch.dtype = torch.float32, max_period: int = 10000) -> Tensor:
        """Sinusoids of ``t`` [N] -> [N, dim], computed in ``dtype``. In float32 the rounding of
        ``t * freq`` (t up to 999) is visible in the output, so the formula is kept exactly."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=dtype, device=t.device) / half)
        args = t[:, None].to(dtype) * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: Tensor) -> Tensor:
        weight = self.mlp[0].weight
        # float32 sinusoids (as the original), float64 for a float64 model
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size, dtype).to(weight.dtype))


class ResBlock(nn.Module):
    """``h + gate * MLP(LN(h) * (1 + scale) + shift)`` with (shift, scale, gate) from the
    conditioning vector y. LayerNorm eps 1e-6, affine."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.modulated(x, self.adaLN_modulation(y))

    def modulated(self, x: Tensor, modulation: Tensor) -> Tensor:
        """The block with its adaLN output given ([..., 3W], broadcast against x [..., W])."""
        shift, scale, gate = modulation.chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    """``Linear(LN(h) * (1 + scale) + shift)`` with (shift, scale) from y; LayerNorm without affine."""

    def __init__(self, model_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(model_channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(model_channels, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 2 * model_channels))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.modulated(x, self.adaLN_modulation(y))

    def modulated(self, x: Tensor, modulation: Tensor) -> Tensor:
        shift, scale = modulation.chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiffusionMLP(nn.Module):
    """The denoiser: an MLP with adaLN conditioning over d-dim tokens (MAR's SimpleMLPAdaLN
    with GenDD's per-token position embedding).

    ``y = time_embed(t) + cond_embed(c) + pos_embed(k)`` conditions every block;
    ``h = input_proj(x)`` runs through ``num_res_blocks`` :class:`ResBlock` and the
    :class:`FinalLayer`. The output [N, out_channels] is (eps_hat, v) for out_channels = 2d.

    Args:
        in_channels: token dim d.  model_channels: width W.  out_channels: 2d.
        z_channels: condition dim F.  num_res_blocks: depth L.  num_chunks: tokens K.

    Init (the original's): xavier-uniform Linear weights with zero biases, N(0, 0.02^2) time-MLP
    weights, zero adaLN output layers and a zero final Linear, so the output starts at exactly 0.
    The position embedding keeps nn.Embedding's N(0, 1).
    """

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, z_channels: int,
                 num_res_blocks: int, num_chunks: int = 1) -> None:
        super().__init__()
        self.in_channels, self.model_channels, self.out_channels = in_channels, model_channels, out_channels
        self.z_channels, self.num_res_blocks, self.num_chunks = z_channels, num_res_blocks, num_chunks
        # construction order = the original's, so torch.manual_seed reproduces its initial weights
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.pos_embed = nn.Embedding(num_chunks, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList([ResBlock(model_channels) for _ in range(num_res_blocks)])
        self.final_layer = FinalLayer(model_channels, out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.res_blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                          self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, t: Tensor, c: Tensor, token_index: Tensor) -> Tensor:
        """x [N, d], t [N] (base steps), c [N, F], token_index [N] -> [N, out_channels]."""
        h = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c) + self.pos_embed(token_index)
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)

    def forward_with_cfg(self, x: Tensor, t: Tensor, c: Tensor, token_index: Tensor, cfg_scale: float) -> Tensor:
        """Classifier-free guidance in the original's layout: rows [2N] = conditional then
        unconditional. Both halves are evaluated at the first half's x; the guided noise
        ``eps_u + cfg (eps_c - eps_u)`` is written to both halves, each half keeps its own v."""
        half = x[: len(x) // 2]
        out = self(torch.cat([half, half], dim=0), t, c, token_index)
        d = self.in_channels
        eps, rest = out[:, :d], out[:, d:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)

    # ----------------------------------------------------------------- the sampler's pieces

    def condition_embedding(self, c: Tensor, token_index: Tensor) -> Tensor:
        """``cond_embed(c) + pos_embed(k)`` [N, W]: the step-independent part of y."""
        return self.cond_embed(c) + self.pos_embed(token_index)

    def null_condition_embedding(self) -> Tensor:
        """The same for the null (zero) condition, per token [K, W]: ``cond_embed(0)`` is its bias."""
        return self.cond_embed.bias + self.pos_embed.weight

    def adaln_layers(self) -> List[nn.Module]:
        """The adaLN modulation of every block, then the final layer's."""
        return [b.adaLN_modulation for b in self.res_blocks] + [self.final_layer.adaLN_modulation]

    def forward_modulated(self, h: Tensor, modulations: Sequence[Tensor]) -> Tensor:
        """The x path from ``h = input_proj(x)`` [..., W] given every adaLN output
        (:meth:`adaln_layers` applied to y), broadcast against h."""
        for block, modulation in zip(self.res_blocks, modulations):
            h = block.modulated(h, modulation)
        return self.final_layer.modulated(h, modulations[-1])


# --------------------------------------------------------------------------- loss + sampler

class DiffusionLoss(nn.Module):
    """GenDD's diffusion loss: a :class:`DiffusionMLP` denoiser of d-dim tokens conditioned on a
    F-dim vector, trained on a 1000-step cosine process with learned variance.

    Args (the original's names):
        target_channels: token dim d.  z_channels: condition dim F.  depth: blocks L (3).
        width: W (1024).  num_sampling_steps: the default respacing of :meth:`sample`
        ("100" CIFAR, "64" ImageNet).  num_chunks: tokens per feature K.

    The state dict holds only ``net.*`` (the processes are not parameters).
    """

    def __init__(self, target_channels: int, z_channels: int, depth: int, width: int,
                 num_sampling_steps: Steps = "100", num_chunks: int = 1) -> None:
        super().__init__()
        self.in_channels = target_channels
        self.num_sampling_steps = str(num_sampling_steps)
        self.net = DiffusionMLP(target_channels, width, 2 * target_channels, z_channels, depth, num_chunks)
        self.train_diffusion = GaussianDiffusion.cosine("", TRAIN_STEPS)
        self._gen_diffusions: Dict[str, GaussianDiffusion] = {}
        self.gen_diffusion = self.sampling_diffusion(self.num_sampling_steps)

    def sampling_diffusion(self, steps: Optional[Steps] = None) -> GaussianDiffusion:
        """The respaced process of :meth:`sample` for ``steps`` ("100", 64, "ddim25", ...), cached."""
        key = self.num_sampling_steps if steps is None else str(steps)
        if key not in self._gen_diffusions:
            self._gen_diffusions[key] = GaussianDiffusion.cosine(key, TRAIN_STEPS)
        return self._gen_diffusions[key]

    # ----------------------------------------------------------------- training

    def _check_rows(self, target: Optional[Tensor], cond: Tensor, token_index: Tensor, who: str) -> int:
        d, f = self.in_channels, self.net.z_channels
        if cond.ndim != 2 or cond.shape[1] != f:
            raise ValueError(f"{who}: cond must be [R, {f}] (z_channels), got {tuple(cond.shape)}")
        rows = cond.shape[0]
        if target is not None and (target.ndim != 2 or target.shape != (rows, d)):
            raise ValueError(f"{who}: target must be [R, {d}] (target_channels) with R = {rows} condition rows, "
                             f"got {tuple(target.shape)}")
        if token_index.shape != (rows,) or token_index.dtype.is_floating_point:
            raise ValueError(f"{who}: token_index must be an integer [R] = [{rows}] tensor, got "
                             f"{tuple(token_index.shape)} {token_index.dtype}")
        if host_readable(token_index) and rows and not (0 <= int(token_index.min()) and
                                                        int(token_index.max()) < self.net.num_chunks):
            raise ValueError(f"{who}: token_index must lie in [0, {self.net.num_chunks}) (num_chunks)")
        return rows

    def losses(self, target: Tensor, cond: Tensor, token_index: Tensor, *, t: Optional[Tensor] = None,
               noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Dict[str, Tensor]:
        """Per-row terms of the diffusion loss.

        Args:
            target: x_0 rows [R, d].  cond: condition rows [R, F].  token_index: [R] in [0, K).
            t: steps [R] in [0, 1000); drawn uniformly when None.
            noise: epsilon [R, d]; drawn N(0, 1) when None.
            generator: draws t and noise when they are not given.

        Returns ``loss``, ``mse``, ``vb`` [R] (``loss = mse + vb``, vb in bits), ``x_t`` [R, d],
        ``model_output`` [R, 2d], and the ``t`` and ``noise`` used.
        """
        rows = self._check_rows(target, cond, token_index, "DiffusionLoss")
        diffusion = self.train_diffusion
        if t is None:
            gen_device = generator.device if generator is not None else target.device
            t = torch.randint(0, diffusion.num_timesteps, (rows,), generator=generator, device=gen_device)
            t = t.to(target.device)
        elif t.shape != (rows,) or t.dtype.is_floating_point:
            raise ValueError(f"DiffusionLoss: t must be an integer [R] = [{rows}] tensor, "
                             f"got {tuple(t.shape)} {t.dtype}")
        elif host_readable(t) and rows and not (0 <= int(t.min()) and int(t.max()) < diffusion.num_timesteps):
            raise ValueError(f"DiffusionLoss: t must lie in [0, {diffusion.num_timesteps})")
        dtype = GaussianDiffusion.compute_dtype(target)
        x_start = target.to(dtype)
        if noise is None:
            noise = _randn(x_start.shape, generator, x_start.device, dtype)
        elif noise.shape != x_start.shape:
            raise ValueError(f"DiffusionLoss: noise must have the target's shape {tuple(x_start.shape)}, "
                             f"got {tuple(noise.shape)}")
        noise = noise.to(dtype)
        x_t = diffusion.q_sample(x_start, t, noise)
        model_output = self.net(x_t, diffusion.model_timesteps(t), cond, token_index).to(dtype)
        terms = diffusion.training_terms(model_output, x_start, x_t, t, noise)
        return {**terms, "x_t": x_t, "model_output": model_output, "t": t, "noise": noise}

    def forward(self, target: Tensor, cond: Tensor, token_index: Tensor, *, t: Optional[Tensor] = None,
                noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """The loss: mean over the R rows of ``mse + vb`` (see :meth:`losses`)."""
        return self.losses(target, cond, token_index, t=t, noise=noise, generator=generator)["loss"].mean()

    # ----------------------------------------------------------------- sampling

    @torch.no_grad()
    def sample(self, cond: Tensor, token_index: Tensor, *, num_samples: int = 1, steps: Optional[Steps] = None,
               cfg: float = 1.0, temperature: float = 1.0, init_noise: Optional[Tensor] = None,
               step_noise: Optional[Union[Tensor, Sequence[Tensor]]] = None,
               generator: Optional[torch.Generator] = None, keep_unconditional: bool = False) -> Tensor:
        """Respaced DDPM ancestral sampling of tokens, with classifier-free guidance.

        Args:
            cond: condition rows [N, F] (e.g. :func:`token_rows` of B features: N = B K).
            token_index: [N] in [0, K).
            num_samples: independent samples per row; the rows sampled are ``num_samples``
                copies of the N rows, sample-major: row ``s N + n``.
            steps: the respacing ("100", 64, ...); None: ``num_sampling_steps``.
            cfg: guidance scale; 1 samples the conditional model alone (no unconditional rows).
            temperature: scales the noise added at each step.
            init_noise: x at the first (noisiest) step [num_samples N, d]; drawn when None.
            step_noise: [S, rows, d] (or S tensors of [rows, d]), the noise of the k-th reverse
                step (k = 0 noisiest; the last is not used). ``rows`` = num_samples N, or twice
                that (the original's layout with cfg != 1: guided rows, then unconditional rows).
            generator: draws the noises not given.
            keep_unconditional: with cfg != 1, also advance the unconditional rows' own
                trajectory (which guidance never reads) and return them after the guided rows,
                as the original does: [2 num_samples N, d]. For checks against it only.

        Returns the sampled tokens [num_samples N, d] (float64 for a float64 model, else float32).
        """
        rows = self._check_rows(None, cond, token_index, "DiffusionLoss.sample")
        if num_samples < 1:
            raise ValueError(f"DiffusionLoss.sample: num_samples must be >= 1, got {num_samples}")
        diffusion = self.sampling_diffusion(steps)
        net, d, S = self.net, self.in_channels, diffusion.num_timesteps
        param_dtype = _param_dtype(net)
        dtype = torch.float64 if param_dtype == torch.float64 else torch.float32
        device = cond.device
        guided = float(cfg) != 1.0
        keep_uncond = guided and keep_unconditional
        total = num_samples * rows

        if init_noise is None:
            x = _randn((total, d), generator, device, dtype)
        elif init_noise.shape != (total, d):
            raise ValueError(f"DiffusionLoss.sample: init_noise must be [num_samples*N, d] = {(total, d)}, "
                             f"got {tuple(init_noise.shape)}")
        else:
            x = init_noise.to(device, dtype)
        if step_noise is not None:
            if len(step_noise) != S:
                raise ValueError(f"DiffusionLoss.sample: step_noise must hold one noise per step ({S}), "
                                 f"got {len(step_noise)}")
            width = step_noise[0].shape[0]
            if width not in (total, 2 * total) or (keep_uncond and width != 2 * total):
                raise ValueError(f"DiffusionLoss.sample: each step noise must be [{total}, {d}]"
                                 f"{f' or [{2 * total}, {d}]' if guided else ''}, got {tuple(step_noise[0].shape)}")
        # x [H, num_samples, N, d]: H = 1 (guided rows), 2 with the unconditional trajectory
        x = x.reshape(1, num_samples, rows, d)
        if keep_uncond:
            x = torch.cat([x, x], dim=0)

        # The step-independent part of y: conditional rows [N, W], then the K null rows.
        embed = net.condition_embedding(cond.to(param_dtype), token_index)
        if guided:
            embed = torch.cat([embed, net.null_condition_embedding()], dim=0)
        null_index = token_index if guided else None
        for k, modulations in enumerate(self._modulations(net, diffusion, embed, null_index)):
            j = S - 1 - k
            # the x path of every row (both halves), one batched call: [H', num_samples, N, 2d]
            out = net.forward_modulated(net.input_proj(x[0].to(param_dtype)), modulations).to(dtype)
            eps = out[..., :d]
            if guided:
                eps = eps[1] + cfg * (eps[0] - eps[1])
            v = out[..., d:] if guided else out[..., d:].unsqueeze(0)  # [H', num_samples, N, d]
            v = v if keep_uncond else v[:1]
            noise = None
            if j > 0:
                if step_noise is not None:
                    noise = step_noise[k].to(device, dtype)[: x.shape[0] * total].view(x.shape)
                else:
                    noise = _randn(x.shape, generator, device, dtype)
            x = self._reverse_step(diffusion, j, x, eps, v, noise, temperature, dtype)
        return x.reshape(-1, d)

    @staticmethod
    def _modulations(net: DiffusionMLP, diffusion: GaussianDiffusion, embed: Tensor,
                     null_index: Optional[Tensor]) -> Iterator[List[Tensor]]:
        """Yield, for each reverse step (noisiest first), every adaLN layer's output for the rows.

        ``embed`` [M, W] holds the distinct condition rows: the N conditional rows, then (with
        guidance, ``null_index`` [N] given) the K null rows. The outputs do not depend on x, so
        they are computed for many steps at once (one large matrix product per layer rather
        than S small ones that each read the whole weight), in chunks of steps whose outputs stay
        under ``MODULATION_BUDGET_BYTES``. Each is yielded as [N, kW], or with guidance as
        [2, 1, N, kW] (the conditional rows, then each row's token's null row) to broadcast
        against the hidden states [2, num_samples, N, W].
        """
        layers = net.adaln_layers()
        S = diffusion.num_timesteps
        t_model = torch.as_tensor(diffusion.timestep_map[::-1].copy(), device=embed.device)
        rows = embed.shape[0] if null_index is None else len(null_index)
        stored_rows = embed.shape[0] + (rows if null_index is not None else 0)
        per_step = stored_rows * sum(layer[-1].out_features for layer in layers) * embed.element_size()
        chunk = max(1, min(S, MODULATION_BUDGET_BYTES // per_step))
        for start in range(0, S, chunk):
            y = net.time_embed(t_model[start:start + chunk]).unsqueeze(1) + embed  # [c, M, W]
            outputs = [layer(y) for layer in layers]
            if null_index is not None:
                outputs = [torch.stack([m[:, :rows], m[:, rows:][:, null_index]], dim=1).unsqueeze(2) for m in outputs]
            for i in range(y.shape[0]):
                yield [m[i] for m in outputs]

    @staticmethod
    def _reverse_step(diffusion: GaussianDiffusion, j: int, x: Tensor, eps: Tensor, v: Tensor,
                      noise: Optional[Tensor], temperature: float, dtype: torch.dtype) -> Tensor:
        """x_{j-1} from x_j: every row is at step j, so the coefficients are scalars."""
        c = {name: diffusion.scalar(name, j, dtype) for name in (
            "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1",
            "posterior_mean_coef2", "log_betas", "posterior_log_variance_clipped")}
        pred_xstart = c["sqrt_recip_alphas_cumprod"] * x - c["sqrt_recipm1_alphas_cumprod"] * eps
        mean = c["posterior_mean_coef1"] * pred_xstart + c["posterior_mean_coef2"] * x
        if noise is None:
            return mean
        frac = (v + 1) / 2
        log_variance = frac * c["log_betas"] + (1 - frac) * c["posterior_log_variance_clipped"]
        return mean + torch.exp(0.5 * log_variance) * noise * temperature


# --------------------------------------------------------------------------- tokens, contraction, mixup

def contract(teacher_feat: Tensor, classifier_weight: Tensor, labels: Optional[Tensor] = None,
             smooth: float = 0.0) -> Tensor:
    """Distribution Contraction of the generated target [B, D], without gradient.

    ``(1 - s) f_t + s W[y]`` for integer labels [B]; ``(1 - s) f_t + s (y @ W)`` for soft
    labels [B, C] (probabilities, e.g. mixup targets); ``f_t`` when ``labels`` is None or s = 0.
    ``classifier_weight`` is the teacher classifier's raw weight [C, D].
    """
    if teacher_feat.ndim != 2 or classifier_weight.ndim != 2 or classifier_weight.shape[1] != teacher_feat.shape[1]:
        raise ValueError(f"contract: teacher features [B, D] and classifier weight [C, D] expected, got "
                         f"{tuple(teacher_feat.shape)} and {tuple(classifier_weight.shape)}")
    if labels is None or smooth == 0:
        return teacher_feat.detach()
    with torch.no_grad():
        if labels.ndim == 1 and not labels.dtype.is_floating_point:
            center = classifier_weight[labels]
        elif labels.ndim == 2 and labels.shape == (teacher_feat.shape[0], classifier_weight.shape[0]):
            center = labels.to(classifier_weight.dtype) @ classifier_weight
        else:
            raise ValueError(f"contract: labels must be class indices [B] or probabilities [B, C] = "
                             f"[{teacher_feat.shape[0]}, {classifier_weight.shape[0]}], got "
                             f"{tuple(labels.shape)} {labels.dtype}")
        return (1 - smooth) * teacher_feat + smooth * center


def draw_mixup(batch: int, beta: float, generator: Optional[torch.Generator] = None) -> Tuple[float, Tensor]:
    """One feature-mixup draw: ``m ~ Beta(beta, beta)`` and a permutation of the batch [B] (CPU).

    ``m`` comes from numpy's Beta sampler seeded by a draw of ``generator``, so a saved
    generator state reproduces it.
    """
    if beta <= 0:
        raise ValueError(f"draw_mixup: beta must be > 0 (beta = 0 turns mixup off), got {beta}")
    perm = torch.randperm(batch, generator=generator)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(beta, beta)), perm


def mix_features(cond: Tensor, target: Tensor, m: float, perm: Tensor) -> Tuple[Tensor, Tensor]:
    """Feature mixup: ``m x + (1 - m) x[perm]`` for the condition [B, F] and the target [B, D]."""
    if cond.shape[0] != target.shape[0] or perm.shape != (cond.shape[0],):
        raise ValueError(f"mix_features: condition, target and perm must share the batch size, got "
                         f"{tuple(cond.shape)}, {tuple(target.shape)}, {tuple(perm.shape)}")
    perm = perm.to(cond.device)
    return m * cond + (1 - m) * cond[perm], m * target + (1 - m) * target[perm]


def token_rows(cond: Tensor, num_tokens: int, *, repeats: int = 1) -> Tuple[Tensor, Tensor]:
    """Each sample's condition [B, F] once per token and per repeat: condition rows
    [repeats B K, F] and token index [repeats B K], row ``r B K + b K + k``."""
    if cond.ndim != 2:
        raise ValueError(f"token_rows: the condition must be [B, F], got {tuple(cond.shape)}")
    B = cond.shape[0]
    rows = cond.unsqueeze(1).expand(B, num_tokens, cond.shape[1]).reshape(B * num_tokens, -1).repeat(repeats, 1)
    index = torch.arange(num_tokens, device=cond.device).repeat(B * repeats)
    return rows, index


def split_tokens(target: Tensor, cond: Tensor, token_dim: int, *, repeats: int = 1) -> Tuple[Tensor, Tensor, Tensor]:
    """Split Tokenization: target [B, D] -> K = D / d contiguous tokens, each a row with its
    sample's condition [B, F] and its token index; the B K rows are repeated ``repeats`` (M) times.

    Returns target rows [R, d], condition rows [R, F], token index [R] (R = M B K), row
    ``r B K + b K + k`` = (``target[b, k d:(k + 1) d]``, ``cond[b]``, k).
    """
    if target.ndim != 2 or target.shape[1] % token_dim:
        raise ValueError(f"split_tokens: the target must be [B, D] with D a multiple of token_dim {token_dim}, "
                         f"got {tuple(target.shape)}")
    if cond.ndim != 2 or cond.shape[0] != target.shape[0]:
        raise ValueError(f"split_tokens: the condition must be [B, F] with B = {target.shape[0]}, "
                         f"got {tuple(cond.shape)}")
    num_tokens = target.shape[1] // token_dim
    cond_rows, index = token_rows(cond, num_tokens, repeats=repeats)
    return target.reshape(-1, token_dim).repeat(repeats, 1), cond_rows, index


def merge_tokens(rows: Tensor, batch: int) -> Tensor:
    """Inverse of the split: token rows [..., B K, d] -> features [..., B, K d]."""
    return rows.reshape(*rows.shape[:-2], batch, -1)


def drop_condition(cond: Tensor, drop_prob: float, *, u: Optional[Tensor] = None,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    """Replace the condition of the rows with ``u < drop_prob`` by the null condition (zeros).

    ``u`` [R] ~ U[0, 1) is drawn when None. The kept rows are multiplied by 1, so their
    gradient passes unchanged.
    """
    if u is None:
        gen_device = generator.device if generator is not None else cond.device
        u = torch.rand(cond.shape[0], generator=generator, device=gen_device).to(cond.device)
    elif u.shape != (cond.shape[0],):
        raise ValueError(f"drop_condition: u must be [R] = [{cond.shape[0]}], got {tuple(u.shape)}")
    keep = 1 - (u < drop_prob).to(cond.dtype)
    return cond * keep.unsqueeze(1)


# --------------------------------------------------------------------------- evaluation

def sample_features(diffloss: DiffusionLoss, cond: Tensor, *, num_samples: int = 1, steps: Optional[Steps] = None,
                    cfg: float = 2.0, temperature: float = 1.0, init_noise: Optional[Tensor] = None,
                    step_noise=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """Sample teacher-like features for B conditions [B, F]: [num_samples, B, D] (D = K d).

    The rows of :meth:`DiffusionLoss.sample` are (sample s, batch b, token k). The recipes use
    cfg 2 and temperature 1 (the original hard-codes both).
    """
    num_tokens = diffloss.net.num_chunks
    cond_rows, index = token_rows(cond, num_tokens)
    tokens = diffloss.sample(cond_rows, index, num_samples=num_samples, steps=steps, cfg=cfg,
                             temperature=temperature, init_noise=init_noise, step_noise=step_noise,
                             generator=generator)
    return merge_tokens(tokens.view(num_samples, -1, diffloss.in_channels), cond.shape[0])


def generated_logits(diffloss: DiffusionLoss, cond: Tensor, classifier_weight: Tensor,
                     classifier_bias: Optional[Tensor] = None, **sample_kw) -> Tuple[Tensor, Tensor]:
    """GenDD's prediction: the teacher classifier on the mean of the sampled features.

    Returns logits [B, C] and the sampled features [num_samples, B, D] (``sample_kw`` as in
    :func:`sample_features`).
    """
    features = sample_features(diffloss, cond, **sample_kw)
    mean = features.mean(dim=0)
    return F.linear(mean.to(classifier_weight.dtype), classifier_weight, classifier_bias), features
