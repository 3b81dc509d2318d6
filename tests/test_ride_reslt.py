"""RIDE-ResLT: the original network and driver lines reproduced (tests/data/reslt_ride.json,
tiny one-block-per-stage networks at 224 px) for 1, 2 and 3 experts; shapes and gradients
for any number of experts; the checkpoint rebuild; flags; one demo epoch evaluated from its
checkpoint with 2 of 3 experts."""
import base64
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import demo_flags
from gpaco.checkpoint import save_checkpoint
from gpaco.classification import evaluate as evaluator, train as trainer
from gpaco.methods import get_method
from gpaco.methods.rebuild import build_model_from_checkpoint, model_config
from gpaco.models.convert import read_checkpoint
from gpaco.models.reslt import gamma_normalised_weight
from gpaco.models.ride_reslt import RIDEResLTOutput, original_key_to_ours, original_to_ours

REF = json.loads((Path(__file__).parent / "data" / "reslt_ride.json").read_text())
CASES = {c["kind"]: c for c in REF["cases"]}
RTOL = {torch.float64: 1e-7, torch.float32: 1e-5}  # max|got - exp| <= rtol * max|exp| per array
METHOD = get_method("ride_reslt")


def decode(entry, dtype):
    raw = base64.b64decode(entry["b64"])
    arr = np.frombuffer(raw, dtype=np.int8 if entry["dtype"] == "int8" else np.float32).astype(np.float64)
    arr = arr * entry.get("scale", 1.0)
    return torch.from_numpy(arr.reshape(entry["shape"]).copy()).to(dtype)


def close(got, expected, dtype, what):
    exp = torch.as_tensor(np.asarray(expected, dtype=np.float64))
    got = got.detach().to(torch.float64).reshape(exp.shape)
    scale = exp.abs().max().item()
    err = (got - exp).abs().max().item()
    assert err <= RTOL[dtype] * scale, f"{what}: max error {err:.3g} > {RTOL[dtype]:g} x {scale:.3g}"


def build(kind, experts, **kw):
    """The case's tiny network with ``experts`` experts, as the method builds it from flags."""
    c = CASES[kind]["constructor"]
    if kind == "imagenet":
        arch, sizes, gamma = "resnext50_32x4d", (8, 3), 0.7
        layout = {"layers": c["layers"], "groups": c["groups"], "width_per_group": c["width_per_group"]}
    else:
        arch, sizes, gamma = "resnet50", (8,), 0.3  # iNaturalist: H and M only
        layout = {"layers": c["layers"], "groups": 1, "width_per_group": 64}
    return METHOD.build_model(arch, c["num_classes"], num_experts=experts, branch_sizes=sizes, eval_gamma=gamma,
                              expert_planes=(c["layer3_output_dim"], c["layer4_output_dim"]), pool="after",
                              original_eval_pooling=True, backbone_kwargs=layout, **kw)


def loaded(kind, experts, dtype):
    model = build(kind, experts)
    state = {k: decode(v, torch.float64) for k, v in CASES[kind]["state_dict"].items()}
    ours, unused = original_to_ours(state, model)
    assert all(int(k.split(".")[1]) >= experts for k in unused)  # only the experts the model does not have
    missing, unexpected = model.load_state_dict(ours, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return model.to(dtype)


def criterion(kind):
    c = CASES[kind]
    if kind == "imagenet":
        options = dict(beta=c["params"]["beta"], branch_sizes=(8, 3), fused_eps=1e-7)
    else:
        options = dict(beta=c["params"]["beta"], branch_sizes=(8,), fused_eps=0.0)
    return METHOD.build_criterion(num_classes=10, class_counts=list(range(1, 11)), **options)  # class 0 rarest


def head_features(model):
    """Hooks keeping each expert's pooled head output [B, K*F] (branch-major) of the next forward."""
    feats = {}
    for k, e in enumerate(model.experts):
        e.head.register_forward_hook(
            lambda mod, inp, out, k=k: feats.__setitem__(k, F.adaptive_avg_pool2d(out, 1).flatten(1)))
    return feats


@pytest.mark.parametrize("experts", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kind", ["imagenet", "inat"])
def test_reproduces_the_original(kind, dtype, experts):
    """Every array of the reference for the first ``experts`` experts (the shared trunk's
    gradients, a sum over all experts, with all 3)."""
    case, inputs = CASES[kind], REF["inputs"]
    exp_all = case["results"]["float64" if dtype == torch.float64 else "float32"]
    images = decode(inputs["images"], dtype)
    target = torch.tensor(inputs["target"])
    k_used = 3 if kind == "imagenet" else 2  # the original's iNaturalist T branch reaches no loss and no prediction
    width = None

    # ---- evaluation: pool before each head, gamma-normalised classifier without bias, mean of the experts
    model = loaded(kind, experts, dtype).eval()
    feats = head_features(model)
    with torch.no_grad():
        out = METHOD.eval_forward(model, images)
    ev = exp_all["eval"]
    gamma = model.experts[0].eval_gamma
    per_expert = []
    for k in range(experts):
        f = feats[k]
        width = f.shape[1] // k_used
        close(f, np.asarray(ev["branch_features"][k])[:, :k_used * width], dtype, f"eval features {k}")
        w = gamma_normalised_weight(model.experts[k].fc.weight, gamma)
        branch = torch.stack([f[:, b * width:(b + 1) * width] @ w.t() for b in range(k_used)])
        close(branch, np.asarray(ev["logits"][k])[:k_used], dtype, f"eval logits {k}")
        per_expert.append(np.asarray(ev["logits"][k])[:k_used].sum(0))
    close(out, np.mean(per_expert, axis=0), dtype, "eval output")
    if kind == "imagenet" and experts == 3:
        close(out, ev["output"], dtype, "eval output (driver)")
    if kind == "inat" and experts == 3:
        close(out * 1.5, ev["output_val_num_experts_3"], dtype, "3 experts (the driver's 1/2 sum)")
        model.eval_experts = 2
        with torch.no_grad():
            close(METHOD.eval_forward(model, images), ev["output_val_num_experts_2"], dtype, "2 experts")

    # ---- one training forward + backward: summed per-expert ResLT losses
    model = loaded(kind, experts, dtype).train()
    feats = head_features(model)
    out = model(images)
    assert isinstance(out, RIDEResLTOutput) and out.expert_logits.shape == (experts, k_used, 3, 10)
    out.expert_logits.retain_grad()
    crit = criterion(kind)
    terms = crit.terms(out, target)
    terms.loss.backward()
    tr = exp_all["train"]
    close(crit.branch_masks[:, target].to(dtype), tr["labels"], dtype, "branch membership")
    close(terms.per_expert, tr["loss_per_expert"][:experts], dtype, "per-expert losses")
    close(terms.loss, sum(tr["loss_per_expert"][:experts]), dtype, "loss")
    if experts == 3:
        close(terms.loss, tr["loss"], dtype, "loss (driver)")
        close(out.logits, tr["logit_sum"], dtype, "train logit sum")
    for k in range(experts):
        e = model.experts[k]
        close(feats[k], np.asarray(tr["branch_features"][k])[:, :k_used * width], dtype, f"train features {k}")
        close(out.expert_logits[k], np.asarray(tr["logits"][k])[:k_used], dtype, f"train logits {k}")
        close(out.expert_logits.grad[k], np.asarray(tr["grad_logits"][k][:k_used], dtype=np.float64), dtype,
              f"d loss / d logits {k}")
        close(e.fc.weight.grad, tr["grad_fc_weight"][k], dtype, f"fc weight grad {k}")
        close(e.fc.bias.grad, tr["grad_fc_bias"][k], dtype, f"fc bias grad {k}")
        bn = e.head[1]
        close(bn.weight.grad, np.asarray(tr["grad_reslt_bn_weight"][k])[:k_used * width], dtype, f"head BN w {k}")
        close(bn.bias.grad, np.asarray(tr["grad_reslt_bn_bias"][k])[:k_used * width], dtype, f"head BN b {k}")
        if kind == "inat":  # the dropped T channels had no gradient in the original either
            assert not np.any(np.asarray(tr["grad_reslt_bn_weight"][k])[k_used * width:])
    params = dict(model.named_parameters())
    for key, norm in tr["grad_norm"].items():
        name = original_key_to_ours(key)
        if name.startswith("backbone.") and experts < 3 or name.startswith("experts.") and int(name[8]) >= experts:
            continue
        close(params[name].grad.norm(), norm, dtype, f"grad norm {key}")
    if experts == 3:
        close(model.backbone.bn1.weight.grad, tr["grad_stem_bn_weight"], dtype, "stem BN grad")
    for key, value in tr["running_mean_after_step"].items():
        buf = dict(model.named_buffers())[original_key_to_ours(key)]
        close(buf, np.asarray(value)[:k_used * width], dtype, key)


@pytest.mark.parametrize("experts", [1, 4])
def test_any_number_of_experts_shapes_and_gradients(experts):
    """Train output [E, K, B, C] and its sum; the loss is the sum of each expert's ResLT loss;
    every expert's own parameters get exactly its own loss's gradient; eval output [B, C]."""
    torch.manual_seed(0)
    model = build("imagenet", experts)
    images, target = torch.randn(4, 3, 64, 64), torch.tensor([0, 3, 7, 9])
    out = model.train()(images)
    assert out.expert_logits.shape == (experts, 3, 4, 10)
    assert torch.allclose(out.logits, out.expert_logits.sum((0, 1)))
    crit = criterion("imagenet")
    terms = crit.terms(out, target)
    assert torch.allclose(terms.loss, sum(crit.loss(z, target) for z in out.expert_logits))
    terms.loss.backward()
    last = model.experts[-1].fc.weight.grad.clone()
    model.zero_grad()
    crit.loss(model.train()(images).expert_logits[-1], target).backward()  # the last expert's loss alone
    assert torch.allclose(model.experts[-1].fc.weight.grad, last, atol=1e-6)
    assert all(p.grad is None or not p.grad.any() for e in model.experts[:-1] for p in e.parameters())
    model.eval()
    assert model(images).shape == (4, 10) and METHOD.eval_forward(model, images).shape == (4, 10)
    assert model.fc.out_features == 10


def test_full_size_models_have_the_original_parameters():
    """The recipes' networks: the original's parameter count and, but for the iNaturalist third
    branch no loss reads, its state-dict shapes."""
    for kind, arch, planes, classes, sizes in (("imagenet", "resnext50_32x4d", (192, 384), 1000, (825, 220)),
                                               ("inat", "resnet50", None, 8142, (6600,))):
        ref = REF["full_size_models"][kind]
        model = METHOD.build_model(arch, classes, branch_sizes=sizes, expert_planes=planes)
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        dropped = 0
        for key, shape in ref["state_dict_shapes"].items():
            name = original_key_to_ours(key)
            assert name in own, key
            if own[name] != tuple(shape):  # iNaturalist: the T rows of each expert's 1x1 conv and BN
                assert kind == "inat" and ".head." in name and own[name][0] * 3 == shape[0] * 2, key
                if not name.endswith(("running_mean", "running_var")):
                    dropped += int(np.prod(shape)) - int(np.prod(own[name]))
        assert sum(p.numel() for p in model.parameters()) + dropped == ref["num_params"]
        assert len(own) == len(ref["state_dict_shapes"])


def test_checkpoint_rebuilds_the_model(tmp_path):
    """A file with the weights and its model_config rebuilds the same model (same evaluation),
    and --ride-eval-experts at evaluation overrides the trained model's option."""
    torch.manual_seed(0)
    options = {"num_experts": 3, "branch_sizes": [8, 3], "eval_gamma": 0.7, "expert_planes": [16, 16],
               "original_eval_pooling": True, "backbone_kwargs": {"layers": [1, 1, 1, 1], "groups": 2,
                                                                  "width_per_group": 4}}
    model = METHOD.build_model("resnext50_32x4d", 10, **options)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 64, 64))  # running statistics off their defaults
    path = tmp_path / "ride.pth"
    save_checkpoint({"model": model.state_dict(),
                     "model_config": model_config("ride_reslt", "classification", "resnext50_32x4d", 10, options)},
                    path)
    rebuilt, report = build_model_from_checkpoint(read_checkpoint(str(path)))
    assert type(rebuilt) is type(model) and report.method == "ride_reslt" and not report.missing
    assert not report.unused and report.loaded == len(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(METHOD.eval_forward(rebuilt, x), METHOD.eval_forward(model, x))
        two, _ = build_model_from_checkpoint(read_checkpoint(str(path)), flag_values={"ride_eval_experts": 2})
        assert torch.allclose(METHOD.eval_forward(two.eval(), x), model.expert_eval_logits(x)[:2].mean(0))
    smaller = copy.deepcopy(model.state_dict())
    del smaller["experts.2.fc.weight"]
    save_checkpoint({"model": smaller, "model_config": model_config("ride_reslt", "classification",
                                                                    "resnext50_32x4d", 10, options)}, path)
    from gpaco.models.convert import CheckpointMismatchError
    with pytest.raises(CheckpointMismatchError, match="experts.2.fc.weight"):
        build_model_from_checkpoint(read_checkpoint(str(path)))


def test_ride_flags_are_checked():
    from gpaco.classification.args import parse_train_args

    base = ["--train-list", "x", "--method", "ride_reslt"]
    with pytest.raises(SystemExit, match="--ride-eval-experts 4 exceeds --ride-experts 3"):
        parse_train_args(base + ["--ride-eval-experts", "4"])
    with pytest.raises(SystemExit, match="--ride-experts must be >= 1, got 0"):
        parse_train_args(base + ["--ride-experts", "0"])
    with pytest.raises(SystemExit, match="--ride-expert-planes must be two positive"):
        parse_train_args(base + ["--ride-expert-planes", "0", "384"])
    with pytest.raises(ValueError, match="RIDE-ResLT builds the Bottleneck ResNets"):
        METHOD.build_model("vit_base_patch16_224", 10)
    with pytest.raises(ValueError, match="trains from scratch"):
        METHOD.build_model("resnet50", 10, pretrained=True)


def test_ride_reslt_trains_on_the_demo_and_evaluates_with_2_of_3_experts(demo_data, tmp_path):
    out = tmp_path / "ride"
    result = trainer.main(demo_flags(demo_data) + [
        "--batch-size", "32", "--device-batch", "16", "--epochs", "1", "--lr", "0.05", "--schedule", "cosine",
        "--warmup-epochs", "1", "--method", "ride_reslt", "--ride-experts", "3", "--reslt-beta", "0.9",
        "--reslt-branch-sizes", "8", "6", "--reslt-gamma", "0.5", "--reslt-original-eval-pooling",
        "--output-dir", str(out)])
    ckpt = torch.load(out / "best.pth", weights_only=True)
    assert ckpt["method"] == "ride_reslt" and any(k.startswith("experts.2.head.") for k in ckpt["model"])
    common = ["--checkpoint", str(out / "best.pth"), "--test-list", str(demo_data / "test_small.txt"),
              "--batch-size", "50", *demo_flags(demo_data, lists=False)]
    ev = evaluator.main(common + ["--output-dir", str(tmp_path / "eval3"), "--save-logits", str(tmp_path / "l3.npy")])
    assert ev["top1"] == pytest.approx(result["top1"]) and not ev["checkpoints"][0].get("missing")
    ev2 = evaluator.main(common + ["--ride-eval-experts", "2", "--output-dir", str(tmp_path / "eval2"),
                                   "--save-logits", str(tmp_path / "l2.npy")])
    assert ev2["num_samples"] == ev["num_samples"]
    assert not np.allclose(np.load(tmp_path / "l2.npy"), np.load(tmp_path / "l3.npy"))
    model, _ = build_model_from_checkpoint(read_checkpoint(str(out / "best.pth")))
    assert model.eval_experts is None and model.num_experts == 3  # trained and validated with all experts
