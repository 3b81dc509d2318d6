"""GenDD's maths core (gpaco/losses/diffusion.py, gpaco/losses/gendd.py) against the original
code's own numbers (tests/data/gendd/README.md), with every recorded random draw injected,
plus the behaviour the vectors do not pin (the batched sampler against the plain loop, the
draws, the error messages)."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpaco.losses import gendd
from gpaco.losses.diffusion import GaussianDiffusion, cosine_betas, space_timesteps
from gpaco.losses.gendd import (
    DiffusionLoss, DiffusionMLP, contract, draw_mixup, drop_condition, generated_logits, merge_tokens, mix_features,
    sample_features, split_tokens, token_rows,
)

DATA = Path(__file__).resolve().parent / "data" / "gendd"
DTYPES = {"float64": torch.float64, "float32": torch.float32}
RTOL = {"float64": 1e-7, "float32": 1e-4}


def load(name):
    with gzip.open(DATA / name, "rt") as f:
        return json.load(f)


DIFFLOSS, SAMPLING = load("diffloss.json.gz"), load("sampling.json.gz")
TOKENS, SCHEDULES = load("tokenize_contract.json.gz"), load("schedules_diffusion.json.gz")


def close(got, exp, rtol, what=""):
    """max|got - exp| <= rtol * max|exp| (the vectors' criterion)."""
    got = torch.as_tensor(got).detach().double()
    exp = torch.as_tensor(exp, dtype=torch.float64)
    assert got.shape == exp.shape, f"{what}: shape {tuple(got.shape)} != {tuple(exp.shape)}"
    err, scale = (got - exp).abs().max().item(), exp.abs().max().item()
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol:g} x {scale:.3g}"


def close_rows(got, exp, rtol, what=""):
    """Element-wise: each row term within rtol of itself (the t = 999 rows would hide the others)."""
    got, exp = torch.as_tensor(got).detach().double(), torch.as_tensor(exp, dtype=torch.float64)
    bad = (got - exp).abs() > rtol * exp.abs() + 1e-12
    assert not bad.any(), f"{what}: rows {bad.nonzero().flatten().tolist()} differ: {got[bad]} vs {exp[bad]}"


def build(params, weights, dtype, **kw):
    loss = DiffusionLoss(params["target_channels"], params["z_channels"], params["depth"], params["width"],
                         num_chunks=params["num_chunks"], **kw).to(dtype)
    loss.load_state_dict({f"net.{k}": torch.tensor(v, dtype=dtype) for k, v in weights.items()})
    return loss


# --------------------------------------------------------------------------- schedule

def test_schedule_arrays_match_the_original():
    ref = SCHEDULES["results"]["diffusion"]
    np.testing.assert_allclose(cosine_betas(1000), ref["named_cosine_betas"], rtol=1e-12, atol=0)
    train = GaussianDiffusion.cosine("")
    assert train.num_timesteps == 1000 and (train.timestep_map == np.arange(1000)).all()
    for name in ("betas", "alphas_cumprod", "posterior_log_variance_clipped"):
        np.testing.assert_allclose(getattr(train, name), ref[f"train_{name}"], rtol=1e-12, atol=0, err_msg=name)
    # bug (c): the clip at 0.999 bites only at the last step
    assert train.betas[-1] == 0.999 and train.betas[-2] < 0.76
    for steps, arrays in ref["gen"].items():
        gen = GaussianDiffusion.cosine(steps)
        assert gen.timestep_map.tolist() == arrays["timestep_map"], steps
        for name in ("betas", "alphas_cumprod", "posterior_log_variance_clipped"):
            np.testing.assert_allclose(getattr(gen, name), arrays[name], rtol=1e-12, atol=0, err_msg=f"{steps} {name}")


def test_space_timesteps_forms():
    assert space_timesteps(1000, "") == set(range(1000))
    assert space_timesteps(1000, 10) == space_timesteps(1000, "10")
    assert sorted(space_timesteps(1000, "10")) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert space_timesteps(1000, "ddim25") == set(range(0, 1000, 40))
    # sections: [0, 500) and [500, 1000), 2 and 3 steps
    assert sorted(space_timesteps(1000, "2,3")) == [0, 499, 500, 750, 999]
    with pytest.raises(ValueError, match="cannot take 600 steps from a section of 500"):
        space_timesteps(1000, "600,3")
    with pytest.raises(ValueError, match="'N', 'N1,N2,...' or 'ddimN'"):
        space_timesteps(1000, "fast")
    with pytest.raises(ValueError, match="exactly 999 steps"):
        space_timesteps(1000, "ddim999")


# --------------------------------------------------------------------------- denoiser

def test_initial_weights_and_names_are_the_originals():
    p = DIFFLOSS["params"]
    torch.manual_seed(0)
    loss = DiffusionLoss(p["target_channels"], p["z_channels"], p["depth"], p["width"], num_chunks=p["num_chunks"])
    ref = DIFFLOSS["inputs"]["weights"]["init"]
    state = loss.state_dict()
    assert list(state) == [f"net.{k}" for k in ref]  # names and order: the original's state dict
    for k, v in ref.items():
        assert torch.equal(state[f"net.{k}"], torch.tensor(v, dtype=torch.float32)), k
    x = torch.randn(5, p["target_channels"])
    t, k = torch.tensor([0, 3, 500, 998, 999]), torch.tensor([0, 1, 2, 0, 1])
    out = loss.net(x, t, torch.randn(5, p["z_channels"]), k)
    assert out.shape == (5, 2 * p["target_channels"]) and not out.any()  # zero output at init


# --------------------------------------------------------------------------- training loss

@pytest.mark.parametrize("kind", DTYPES)
@pytest.mark.parametrize("case_name", list(DIFFLOSS["cases"]))
def test_diffusion_loss_matches_the_original(case_name, kind):
    dtype, rtol = DTYPES[kind], RTOL[kind]
    case, inputs = DIFFLOSS["cases"][case_name], DIFFLOSS["inputs"]
    ref = DIFFLOSS["results"][kind][case_name]
    loss_fn = build(DIFFLOSS["params"], inputs["weights"][case["weights"]], dtype)
    target = torch.tensor(inputs["target"], dtype=dtype, requires_grad=True)
    z = torch.tensor(inputs["z"], dtype=dtype, requires_grad=True)
    terms = loss_fn.losses(target, z, torch.tensor(inputs["chunk_idx"]), t=torch.tensor(case["t"]),
                           noise=torch.tensor(inputs["noise"], dtype=dtype))
    loss = terms["loss"].mean()
    loss.backward()
    assert loss.dtype == dtype
    close(loss, ref["loss"], rtol, "loss")
    for name, key in (("loss", "loss_rows"), ("mse", "mse_rows"), ("vb", "vb_rows")):
        close(terms[name], ref[key], rtol, key)
        close_rows(terms[name], ref[key], 10 * rtol, key)
    close(terms["x_t"], ref["x_t"], rtol, "x_t")
    if case["weights"] == "init":
        assert not terms["model_output"].any() and not np.any(ref["model_output"])
    else:
        close(terms["model_output"], ref["model_output"], rtol, "model_output")
        close(target.grad, ref["grad_target"], rtol, "grad target")
        close(z.grad, ref["grad_z"], rtol, "grad z")
    for name, grad in ref["grad_params"].items():
        got = loss_fn.get_parameter(f"net.{name}").grad
        if not np.any(grad):
            assert got is None or not got.any(), name
        else:
            close(got, grad, rtol, f"grad {name}")


def test_loss_draws_come_from_the_generator():
    torch.manual_seed(1)
    loss_fn = DiffusionLoss(4, 6, 2, 16, num_chunks=3)
    target, z, k = torch.randn(9, 4), torch.randn(9, 6), torch.arange(3).repeat(3)
    a = loss_fn.losses(target, z, k, generator=torch.Generator().manual_seed(5))
    b = loss_fn.losses(target, z, k, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a["t"], b["t"]) and torch.equal(a["noise"], b["noise"]) and torch.equal(a["loss"], b["loss"])
    assert a["t"].min() >= 0 and a["t"].max() < 1000 and a["noise"].shape == (9, 4)
    # the same draws passed back give the same loss; forward is the mean of the rows
    again = loss_fn(target, z, k, t=a["t"], noise=a["noise"])
    assert torch.equal(again, a["loss"].mean())


def test_vb_trains_only_the_variance_and_mse_only_the_noise():
    torch.manual_seed(2)
    loss_fn = DiffusionLoss(4, 6, 2, 16, num_chunks=3)
    for p in loss_fn.parameters():  # leave the zero init so both outputs move with the weights
        p.data.add_(0.1 * torch.randn_like(p))
    target, z, k = torch.randn(6, 4), torch.randn(6, 6), torch.arange(3).repeat(2)
    out = loss_fn.losses(target, z, k, t=torch.tensor([0, 5, 200, 600, 998, 999]), noise=torch.randn(6, 4))
    w = loss_fn.net.final_layer.linear.weight
    g_vb, = torch.autograd.grad(out["vb"].sum(), w, retain_graph=True)
    g_mse, = torch.autograd.grad(out["mse"].sum(), w)
    assert not g_vb[:4].any() and g_vb[4:].any()  # rows 0..d-1 of the final layer make eps_hat
    assert g_mse[:4].any() and not g_mse[4:].any()


def test_loss_input_errors():
    loss_fn = DiffusionLoss(4, 6, 1, 8, num_chunks=3)
    target, z, k = torch.randn(3, 4), torch.randn(3, 6), torch.arange(3)
    with pytest.raises(ValueError, match=r"cond must be \[R, 6\] \(z_channels\)"):
        loss_fn(target, torch.randn(3, 5), k)
    with pytest.raises(ValueError, match=r"target must be \[R, 4\]"):
        loss_fn(torch.randn(3, 8), z, k)
    with pytest.raises(ValueError, match=r"token_index must lie in \[0, 3\)"):
        loss_fn(target, z, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1000\)"):
        loss_fn(target, z, k, t=torch.tensor([0, 1, 1000]))
    with pytest.raises(ValueError, match="noise must have the target's shape"):
        loss_fn(target, z, k, noise=torch.randn(3, 5))


# --------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("kind", DTYPES)
@pytest.mark.parametrize("case_name", list(SAMPLING["cases"]))
def test_sample_matches_the_original(case_name, kind):
    dtype, rtol = DTYPES[kind], RTOL[kind]
    case, ref = SAMPLING["cases"][case_name], SAMPLING["results"][kind][case_name]
    loss_fn = build(SAMPLING["params"], SAMPLING["inputs"]["denoiser_weights"], dtype)
    n = SAMPLING["params"]["rows_half"]
    cond = torch.tensor(case["z_rows"], dtype=dtype)
    assert case["cfg"] == 1 or not cond[n:].any()  # the original's unconditional half: zero conditions
    out = loss_fn.sample(cond[:n], torch.tensor(case["chunk_idx_rows"][:n]), steps=case["steps"], cfg=case["cfg"],
                         temperature=case["temperature"], init_noise=torch.tensor(case["init_noise"], dtype=dtype),
                         step_noise=torch.tensor(case["step_noise"], dtype=dtype), keep_unconditional=True)
    assert out.dtype == dtype
    close(out, ref["sample"], rtol, "sample")
    assert loss_fn.sampling_diffusion(case["steps"]).timestep_map.tolist() == ref["timestep_map"]


@pytest.mark.parametrize("kind", DTYPES)
def test_forward_test_stage2_matches_the_original(kind):
    dtype, rtol = DTYPES[kind], RTOL[kind]
    f = SAMPLING["forward_test_stage2_inputs"]
    ref = SAMPLING["results"][kind]["forward_test_stage2"]
    p = dict(SAMPLING["params"], z_channels=f["feature_dim"], num_chunks=f["num_tokens"])
    loss_fn = build(p, f["denoiser_weights"], dtype, num_sampling_steps=f["num_sampling_steps"])

    def T(key):
        return torch.tensor(f[key], dtype=dtype)

    feat = T("student_feat")
    z = F.layer_norm(feat, (f["feature_dim"],), T("ln_weight"), T("ln_bias"), 1e-5)
    draws = dict(num_samples=f["num_sampling"], cfg=f["cfg"], temperature=f["temperature"],
                 init_noise=T("init_noise"), step_noise=T("step_noise"))
    logits, features = generated_logits(loss_fn, z, T("teacher_fc_weight"), T("teacher_fc_bias"), **draws)
    close(logits, ref["logits"], rtol, "logits")
    close(features, ref["generated_features"], rtol, "generated features")
    close(features.mean(0), ref["generated_mean_feature"], rtol, "generated mean feature")
    close(F.linear(feat, T("student_fc_weight"), T("student_fc_bias")), ref["logits_new"], rtol, "logits_new")
    # the rows the original sampled: (half, sample, batch, token), the unconditional half with zero conditions
    cond_rows, index = token_rows(z, f["num_tokens"])
    close(torch.cat([cond_rows.repeat(2, 1), torch.zeros(2 * len(cond_rows), f["feature_dim"])]), ref["z_rows"],
          rtol, "z_rows")
    assert index.repeat(2 * f["num_sampling"]).tolist() == ref["chunk_idx_rows"]
    tokens = loss_fn.sample(cond_rows, index, keep_unconditional=True, **draws)
    close(tokens, ref["sampled_tokens"], rtol, "sampled tokens")
    assert loss_fn.sampling_diffusion().timestep_map.tolist() == ref["timestep_map"]  # "64": the constructor default


def plain_sample(loss_fn, cond, index, *, num_samples, steps, cfg, temperature, init_noise, step_noise):
    """The original's loop written plainly: all 2 x num_samples x N rows through forward_with_cfg at every
    step, the look-ups per row, both halves advanced."""
    diffusion = loss_fn.sampling_diffusion(steps)
    cond_rows, idx = cond.repeat(num_samples, 1), index.repeat(num_samples)
    if cfg != 1:
        cond_rows = torch.cat([cond_rows, torch.zeros_like(cond_rows)])
        idx = idx.repeat(2)
        x = torch.cat([init_noise, init_noise])
    else:
        x = init_noise
    for k, j in enumerate(range(diffusion.num_timesteps - 1, -1, -1)):
        t = torch.full((len(x),), j)
        t_model = diffusion.model_timesteps(t)
        if cfg != 1:
            out = loss_fn.net.forward_with_cfg(x, t_model, cond_rows, idx, cfg)
        else:
            out = loss_fn.net(x, t_model, cond_rows, idx)
        d = x.shape[1]
        step = diffusion.p_mean_variance(out[:, :d], out[:, d:], x, t)
        x = step["mean"] + (j > 0) * torch.exp(0.5 * step["log_variance"]) * step_noise[k][: len(x)] * temperature
    return x


@pytest.mark.parametrize("cfg", [1.0, 2.0, 3.5])
def test_batched_sampler_equals_the_plain_loop(cfg):
    torch.manual_seed(3)
    loss_fn = DiffusionLoss(4, 5, 2, 16, num_sampling_steps="10", num_chunks=3).double()
    with torch.no_grad():
        for p in loss_fn.parameters():
            p.add_(0.2 * torch.randn_like(p))
    B, K, NS = 2, 3, 3
    cond, index = token_rows(torch.randn(B, 5, dtype=torch.float64), K)
    rows = NS * B * K
    init = torch.randn(rows, 4, dtype=torch.float64)
    noise = torch.randn(10, 2 * rows, 4, dtype=torch.float64)
    draws = dict(num_samples=NS, steps="10", cfg=cfg, temperature=0.8, init_noise=init, step_noise=noise)
    plain = plain_sample(loss_fn, cond, index, **draws)
    fast = loss_fn.sample(cond, index, keep_unconditional=True, **draws)
    torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-10 * plain.abs().max().item())
    guided_only = loss_fn.sample(cond, index, **draws)
    assert torch.equal(guided_only, fast[:rows])
    # the step noise may also be given for the guided rows alone
    assert torch.equal(loss_fn.sample(cond, index, **{**draws, "step_noise": noise[:, :rows]}), guided_only)


def test_sampler_modulation_chunks_do_not_change_the_sample(monkeypatch):
    torch.manual_seed(5)
    loss_fn = DiffusionLoss(4, 5, 2, 16, num_sampling_steps="10", num_chunks=2).double()
    with torch.no_grad():
        for p in loss_fn.parameters():
            p.add_(0.2 * torch.randn_like(p))
    cond, index = token_rows(torch.randn(3, 5, dtype=torch.float64), 2)
    draws = dict(num_samples=2, cfg=2.0, init_noise=torch.randn(12, 4, dtype=torch.float64),
                 step_noise=torch.randn(10, 12, 4, dtype=torch.float64))
    whole = loss_fn.sample(cond, index, **draws)  # all 10 steps' modulations in one product
    monkeypatch.setattr(gendd, "MODULATION_BUDGET_BYTES", 1)  # one step at a time
    torch.testing.assert_close(loss_fn.sample(cond, index, **draws), whole, rtol=1e-12, atol=0)


def test_sampler_draws_from_the_generator():
    torch.manual_seed(4)
    loss_fn = DiffusionLoss(4, 5, 1, 8, num_chunks=2)
    cond = torch.randn(3, 5)
    a = sample_features(loss_fn, cond, num_samples=2, steps="5", generator=torch.Generator().manual_seed(0))
    b = sample_features(loss_fn, cond, num_samples=2, steps="5", generator=torch.Generator().manual_seed(0))
    c = sample_features(loss_fn, cond, num_samples=2, steps="5", generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 8) and torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_input_errors():
    loss_fn = DiffusionLoss(4, 5, 1, 8, num_chunks=2)
    cond, index = token_rows(torch.randn(3, 5), 2)
    with pytest.raises(ValueError, match=r"init_noise must be \[num_samples\*N, d\] = \(12, 4\)"):
        loss_fn.sample(cond, index, num_samples=2, init_noise=torch.randn(6, 4))
    with pytest.raises(ValueError, match=r"one noise per step \(10\)"):
        loss_fn.sample(cond, index, steps="10", step_noise=torch.randn(9, 6, 4))
    with pytest.raises(ValueError, match=r"each step noise must be \[6, 4\] or \[12, 4\]"):
        loss_fn.sample(cond, index, steps="10", cfg=2.0, step_noise=torch.randn(10, 7, 4))
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        loss_fn.sample(cond, index, num_samples=0)


# --------------------------------------------------------------------------- tokens, contraction, mixup

@pytest.mark.parametrize("kind", DTYPES)
@pytest.mark.parametrize("case_name", list(TOKENS["cases"]))
def test_tokenize_and_contract_match_the_original(case_name, kind):
    dtype, rtol = DTYPES[kind], RTOL[kind]
    p, inputs = TOKENS["params"], TOKENS["inputs"]
    case, ref = TOKENS["cases"][case_name], TOKENS["results"][kind][case_name]

    def T(key):
        return torch.tensor(inputs[key], dtype=dtype)

    z = F.layer_norm(T("student_feat"), (p["feature_dim"],))  # the default LayerNorm (ones, zeros)
    labels = {"hard": torch.tensor(inputs["y_hard"]), "soft": T("y_soft"), None: None}[case["y"]]
    target = contract(T("teacher_feat"), T("teacher_fc_weight"), labels, case["smooth"])
    if case["beta"] > 0:
        z, target = mix_features(z, target, case["m"], torch.tensor(case["perm"]))
    target_rows, cond_rows, index = split_tokens(target, z, p["token_dim"], repeats=p["diffusion_batch_mul"])
    cond_rows = drop_condition(cond_rows, 0.0, u=torch.full((len(cond_rows),), 0.5, dtype=dtype))  # as recorded
    close(target_rows, ref["target_rows"], rtol, "target rows")
    close(cond_rows, ref["z_rows"], rtol, "z rows")
    assert index.tolist() == ref["chunk_idx_rows"]
    close(target, ref["target_per_sample"], rtol, "target per sample")
    assert torch.equal(merge_tokens(target_rows[: p["batch"] * p["num_tokens"]], p["batch"]), target)
    close(z, ref["z_per_sample"], rtol, "z per sample")


def test_contract_forms_and_errors():
    f, w = torch.randn(2, 4), torch.randn(3, 4)
    assert torch.equal(contract(f, w, None, 0.9), f) and torch.equal(contract(f, w, torch.tensor([0, 1]), 0.0), f)
    hard = contract(f, w, torch.tensor([2, 0]), 0.5)
    torch.testing.assert_close(hard, 0.5 * f + 0.5 * w[[2, 0]])
    onehot = F.one_hot(torch.tensor([2, 0]), 3).float()
    torch.testing.assert_close(contract(f, w, onehot, 0.5), hard)  # one-hot probabilities = indices
    assert not contract(f.requires_grad_(), w, torch.tensor([2, 0]), 0.5).requires_grad
    with pytest.raises(ValueError, match=r"labels must be class indices \[B\] or probabilities \[B, C\] = \[2, 3\]"):
        contract(f, w, torch.ones(2, 4), 0.5)
    with pytest.raises(ValueError, match=r"classifier weight \[C, D\]"):
        contract(f, torch.randn(3, 5), None, 0.5)


def test_split_tokens_layout_and_errors():
    target = torch.arange(2 * 6, dtype=torch.float32).view(2, 6)
    cond = torch.tensor([[10.0], [20.0]])
    rows, cond_rows, index = split_tokens(target, cond, 2, repeats=2)
    # row r*B*K + b*K + k = (target[b, 2k:2k+2], cond[b], k)
    for r in range(2):
        for b in range(2):
            for k in range(3):
                i = r * 6 + b * 3 + k
                assert rows[i].tolist() == target[b, 2 * k:2 * k + 2].tolist()
                assert cond_rows[i].item() == cond[b].item() and index[i].item() == k
    assert torch.equal(merge_tokens(rows.view(2, 6, 2), 2), target.expand(2, 2, 6))
    with pytest.raises(ValueError, match="D a multiple of token_dim 4"):
        split_tokens(target, cond, 4)


def test_drop_condition_and_its_gradient():
    cond = torch.randn(4, 3, requires_grad=True)
    u = torch.tensor([0.1, 0.5, 0.19, 0.2])
    out = drop_condition(cond, 0.2, u=u)
    assert not out[[0, 2]].any() and torch.equal(out[[1, 3]], cond[[1, 3]])  # drop iff u < p
    out.sum().backward()
    assert cond.grad[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    g = torch.Generator().manual_seed(0)
    assert torch.equal(drop_condition(cond, 0.5, generator=g),
                       drop_condition(cond, 0.5, u=torch.rand(4, generator=torch.Generator().manual_seed(0))))
    with pytest.raises(ValueError, match=r"u must be \[R\] = \[4\]"):
        drop_condition(cond, 0.2, u=torch.rand(3))


def test_mixup_draws_and_mixing():
    m1, p1 = draw_mixup(8, 1.0, torch.Generator().manual_seed(0))
    m2, p2 = draw_mixup(8, 1.0, torch.Generator().manual_seed(0))
    assert m1 == m2 and torch.equal(p1, p2) and 0 < m1 < 1 and sorted(p1.tolist()) == list(range(8))
    ms = [draw_mixup(2, 0.2, torch.Generator().manual_seed(s))[0] for s in range(200)]
    assert abs(np.mean(ms) - 0.5) < 0.1 and np.mean([min(m, 1 - m) < 0.1 for m in ms]) > 0.4  # Beta(.2,.2): U-shaped
    z, t = torch.randn(3, 2), torch.randn(3, 5)
    zm, tm = mix_features(z, t, 0.25, torch.tensor([2, 0, 1]))
    torch.testing.assert_close(zm, 0.25 * z + 0.75 * z[[2, 0, 1]])
    torch.testing.assert_close(tm, 0.25 * t + 0.75 * t[[2, 0, 1]])
    with pytest.raises(ValueError, match="beta must be > 0"):
        draw_mixup(4, 0.0)


def test_denoiser_accepts_float64_time_embedding():
    net = DiffusionMLP(4, 8, 8, 5, 1, 2).double()
    out = net(torch.randn(3, 4, dtype=torch.float64), torch.tensor([0, 1, 999]), torch.randn(3, 5, dtype=torch.float64),
              torch.tensor([0, 1, 0]))
    assert out.dtype == torch.float64
