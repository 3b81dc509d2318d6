"""Checkpoints from anywhere: the original's key layouts, MAE-style files, conversion, refusal of pickles."""
from __future__ import annotations

import argparse
import copy
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpaco.classification import evaluate as evaluator
from gpaco.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gpaco.engine.precision import resolve_channels_last
from gpaco.methods.rebuild import (
    build_from_config, build_model, build_model_from_checkpoint, method_for_roles, model_config,
)
from gpaco.models.convert import detect_layout, read_checkpoint, unwrap

NUM_CLASSES = 3
IMG = 16


def make_images(root: Path, per_class: int = 3, num_classes: int = NUM_CLASSES, size: int = IMG) -> Path:
    """Random RGB PNGs under root/images/<label>/ and root/test.txt; returns the list path."""
    rng = np.random.default_rng(0)
    lines = []
    for c in range(num_classes):
        (root / "images" / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rel = f"images/{c}/{i}.png"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / rel)
            lines.append(f"{rel} {c}")
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    return root / "test.txt"


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights and BN statistics, eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return model.eval()


def original_layout(model: torch.nn.Module, method: str) -> "OrderedDict[str, torch.Tensor]":
    """The original's DDP state dict (docs/method.md#checkpoint-layouts) of one of our models, key by key."""
    sd = model.state_dict()
    out = OrderedDict()
    enc_q = "encoder_q" if method == "paco" else "encoder"
    for k, v in sd.items():
        if k.startswith(f"{enc_q}.backbone."):
            out["module.encoder_q." + k[len(f"{enc_q}.backbone."):]] = v.clone()
        elif k.startswith(f"{enc_q}.projection."):
            out["module.encoder_q.fc." + k[len(f"{enc_q}.projection."):]] = v.clone()
        elif k.startswith("encoder_k.backbone."):
            out["module.encoder_k." + k[len("encoder_k.backbone."):]] = v.clone()
        elif k.startswith("encoder_k.projection."):
            out["module.encoder_k.fc." + k[len("encoder_k.projection."):]] = v.clone()
        elif k.startswith("fc."):
            out["module.linear." + k[3:]] = v.clone()
            if method == "paco":
                out["module.linear_k." + k[3:]] = v.clone() + 1
        elif k == "queue.features":
            out["module.queue"] = v.clone()
        elif k == "queue.labels":
            out["module.queue_l"] = v.clone()
        elif k == "queue.ptr":
            out["module.queue_ptr"] = v.clone()
        else:
            raise AssertionError(f"unmapped key {k}")
    return out


def direct_logits(model: torch.nn.Module, list_path: Path, root: Path) -> torch.Tensor:
    """The model's logits on the list's images, computed without tools/eval.py (one batch), in
    the memory order tools/eval.py uses on the CPU (channels-last), so that they are bit-equal."""
    from gpaco.data.transforms import NORMALIZATION, build_eval_transform

    mean, std = NORMALIZATION["mnist"]
    tf = build_eval_transform(IMG, resize_size=IMG, mean=mean, std=std)
    paths = [line.split()[0] for line in list_path.read_text().splitlines()]
    x = torch.stack([tf(Image.open(root / p).convert("RGB")) for p in paths])
    fmt = torch.channels_last if resolve_channels_last(None, torch.device("cpu"), "none") else torch.contiguous_format
    with torch.no_grad():
        return copy.deepcopy(model).to(memory_format=fmt).eval()(x.contiguous(memory_format=fmt))


def eval_args(root: Path, list_path: Path, out: Path, *ckpts_and_flags: str):
    return [*ckpts_and_flags, "--data-root", str(root), "--test-list", str(list_path), "--image-size", str(IMG),
            "--resize-size", str(IMG), "--norm", "mnist", "--batch-size", "64", "--workers", "0",
            "--output-dir", str(out), "--save-logits", str(out / "logits.npy")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return root, make_images(root)


@pytest.mark.parametrize("method", ["gpaco", "paco"])
def test_original_layout_round_trip_gives_identical_logits(data, tmp_path, method):
    root, test_list = data
    model = randomize(build_model(method, "resnet8", NUM_CLASSES, queue_size=16, proj_dim=8))
    path = tmp_path / "moco_ckpt.best.pth.tar"
    torch.save({"epoch": 400, "arch": "resnet8", "acc": torch.tensor(58.5),
                "state_dict": original_layout(model, method),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.02, "momentum": 0.9, "params": [0, 1]}]}}, path)
    loaded = read_checkpoint(str(path))
    assert loaded.layout == f"{method}_original" and loaded.meta["arch"] == "resnet8"
    res = evaluator.main(eval_args(root, test_list, tmp_path / "ev", "--checkpoint", str(path)))
    got = torch.from_numpy(np.load(tmp_path / "ev" / "logits.npy"))
    assert torch.equal(got, direct_logits(model, test_list, root))
    (report,) = res["checkpoints"]
    assert report["layout"] == f"{method}_original" and report["method"] == method and not report["missing"]
    if method == "paco":  # the dead momentum classifier is listed, not silently dropped
        assert any(u.startswith("linear_k.weight") and "never used" in u for u in report["unused"])
    else:
        assert not report["unused"]
    # The same file evaluated as a plain classifier: the projection/queue/key encoder are listed as unused.
    res = evaluator.main(eval_args(root, test_list, tmp_path / "ev_ce", "--checkpoint", str(path), "--method", "ce"))
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "ev_ce" / "logits.npy")), got)
    unused = res["checkpoints"][0]["unused"]
    assert any(u.startswith("encoder_q.fc.0.weight") for u in unused) and any(u.startswith("queue ") for u in unused)
    metrics = json.loads((tmp_path / "ev_ce" / "metrics.json").read_text())
    assert metrics["checkpoints"][0]["unused"] == unused


def test_missing_classifier_is_an_error_that_names_it(data, tmp_path):
    root, test_list = data
    model = randomize(build_model("gpaco", "resnet8", NUM_CLASSES, queue_size=16, proj_dim=8))
    sd = original_layout(model, "gpaco")
    del sd["module.linear.weight"]
    sd["module.encoder_q.layer9.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth.tar"
    torch.save({"arch": "resnet8", "state_dict": sd}, path)
    with pytest.raises(SystemExit) as exc:
        evaluator.main(eval_args(root, test_list, tmp_path / "ev", "--checkpoint", str(path), "--num-classes", "3"))
    msg = str(exc.value)
    assert "broken.pth.tar does not fit the model" in msg and "fc.weight" in msg
    assert "unused file keys: encoder_q.* (1)" in msg
    # a shape mismatch on the classification path names the keys too
    with pytest.raises(SystemExit, match="does not fit the model"):
        evaluator.main(eval_args(root, test_list, tmp_path / "ev", "--checkpoint", str(path), "--arch", "resnet20",
                                 "--num-classes", "3"))


class _Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_original_checkpoint_is_refused_and_does_not_run(data, tmp_path):
    root, test_list = data
    model = randomize(build_model("gpaco", "resnet8", NUM_CLASSES, queue_size=16, proj_dim=8))
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"arch": "resnet8", "state_dict": original_layout(model, "gpaco"), "extra": _Exploit(marker)}, path)
    with pytest.raises(SystemExit) as exc:
        evaluator.main(eval_args(root, test_list, tmp_path / "ev", "--checkpoint", str(path)))
    msg = str(exc.value)
    assert "arbitrary code" in msg and "tools/convert_checkpoint.py --trust-pickle" in msg and str(path) in msg
    assert "it needs io.open" in msg  # says what the file needs, read without unpickling
    from tools_convert import main as convert_main

    with pytest.raises(SystemExit, match="refusing to load"):
        convert_main([str(path), str(tmp_path / "out.pth")])
    assert not marker.exists() and not (tmp_path / "out.pth").exists()
    # The deliberate path: --trust-pickle unpickles in full (the payload runs: the user accepted that),
    # drops what is not data and writes a clean weights-only file that evaluates exactly.
    conversion = convert_main(["--trust-pickle", str(path), str(tmp_path / "out.pth")])
    assert marker.exists()
    notes = conversion["notes"]
    assert any("fully unpickled" in n and "io.open" in n for n in notes) and any("dropped" in n for n in notes)
    load_checkpoint(tmp_path / "out.pth")
    evaluator.main(eval_args(root, test_list, tmp_path / "ev2", "--checkpoint", str(tmp_path / "out.pth")))
    got = torch.from_numpy(np.load(tmp_path / "ev2" / "logits.npy"))
    assert torch.equal(got, direct_logits(model, test_list, root))


def test_mae_layout_with_namespace_needs_trust_pickle_and_converts(data, tmp_path):
    """MAE-style {'model', 'args': Namespace}: refused by eval; --trust-pickle rebuilds the Namespace
    as data (nothing executed) and the converted .pth / .safetensors evaluate identically."""
    from tools_convert import main as convert_main

    root, test_list = data
    model = randomize(build_model("gpaco", "mae_vit_tiny_d2_patch8", NUM_CLASSES, queue_size=16, proj_dim=8,
                                  backbone_kwargs={"img_size": IMG}, projection_act="gelu"))
    sd = model.state_dict()
    mae = OrderedDict()
    for k, v in sd.items():
        if k.startswith("encoder.backbone."):
            mae[k[len("encoder.backbone."):]] = v
        elif k.startswith("encoder.projection."):
            mae["mlp." + k[len("encoder.projection."):]] = v
        elif k.startswith("fc."):
            mae["head." + k[3:]] = v
        else:
            mae[{"queue.features": "queue", "queue.labels": "queue_l", "queue.ptr": "queue_ptr"}[k]] = v
    assert detect_layout(mae) == "mae_gpaco"
    path = tmp_path / "checkpoint-99.pth"
    torch.save({"model": mae, "epoch": 99, "args": argparse.Namespace(model="vit_tiny", nb_classes=NUM_CLASSES,
                                                                      input_size=IMG, best=np.float64(1.5))}, path)
    with pytest.raises(SystemExit, match="argparse.Namespace"):
        evaluator.main(eval_args(root, test_list, tmp_path / "ev", "--checkpoint", str(path)))
    expected = direct_logits(model, test_list, root)
    for out in ("conv.pth", "conv.safetensors"):
        conversion = convert_main(["--trust-pickle", "--arch", "mae_vit_tiny_d2_patch8", str(path),
                                   str(tmp_path / out)])
        assert conversion["layout"] == "mae_gpaco" and not conversion["missing"] and not conversion["unused"]
        assert any("nothing was executed" in n for n in conversion["notes"])
        # the converted file records how to build its model: the GELU projection came from the
        # builder's own rule for ViTs, the sizes from the tensors, the image size from MAE's args
        cfg = read_checkpoint(str(tmp_path / out)).meta["model_config"]
        assert cfg == {"method": "gpaco", "task": "classification", "arch": "mae_vit_tiny_d2_patch8",
                       "num_classes": NUM_CLASSES, "options": {"proj_dim": 8, "queue_size": 16, "hidden_dim": 64,
                                                               "backbone_kwargs": {"img_size": IMG}}}
        assert type(build_from_config(cfg).encoder.projection) is type(model.encoder.projection)
        if out.endswith(".pth"):
            saved = load_checkpoint(tmp_path / out)  # weights-only loadable
            assert saved["method"] == "gpaco" and saved["arch"] == "mae_vit_tiny_d2_patch8"
            assert saved["model_config"] == cfg
        res = evaluator.main(eval_args(root, test_list, tmp_path / f"ev_{out}", "--checkpoint", str(tmp_path / out)))
        assert res["checkpoints"][0]["method"] == "gpaco"
        got = torch.from_numpy(np.load(tmp_path / f"ev_{out}" / "logits.npy"))
        assert torch.equal(got, expected), out


def test_our_checkpoint_converts_to_safetensors_and_back(data, tmp_path):
    from tools_convert import main as convert_main

    root, test_list = data
    model = randomize(build_model("ce", "resnet8", NUM_CLASSES))
    ours = tmp_path / "best.pth"
    save_checkpoint({"model": model.state_dict(), "arch": "resnet8", "method": "ce", "num_classes": NUM_CLASSES,
                     "args": {"arch": "resnet8", "method": "ce", "norm": "mnist", "image_size": IMG}}, ours)
    convert_main([str(ours), str(tmp_path / "w.safetensors")])
    state, meta = unwrap(load_checkpoint(tmp_path / "w.safetensors"))
    assert set(state) == set(model.state_dict())
    res = evaluator.main(eval_args(root, test_list, tmp_path / "ev", "--checkpoint", str(tmp_path / "w.safetensors")))
    assert res["checkpoints"][0]["layout"] == "gpaco" and res["checkpoints"][0]["arch"] == "resnet8"
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "ev" / "logits.npy")), direct_logits(model, test_list, root))


def test_model_config_is_plain_data_that_rebuilds_the_model():
    cfg = model_config("gpaco", "classification", "resnet8", NUM_CLASSES,
                       {"pretrained": "weights.pth", "proj_dim": 8, "queue_size": 16, "projection_act": "gelu",
                        "backbone_kwargs": {"sizes": (1, 2)}, "device_batch": None})
    assert cfg == {"method": "gpaco", "task": "classification", "arch": "resnet8", "num_classes": NUM_CLASSES,
                   "options": {"proj_dim": 8, "queue_size": 16, "projection_act": "gelu",
                               "backbone_kwargs": {"sizes": [1, 2]}, "device_batch": None}}
    del cfg["options"]["backbone_kwargs"]
    model = build_from_config(cfg)
    assert model.queue.size == 16 and model.encoder.projection[-1].out_features == 8
    assert type(model.encoder.projection).__name__ == "MAEProjection"  # gelu, as recorded
    assert build_from_config(cfg, queue_size=32).queue.size == 32  # an override wins
    with pytest.raises(TypeError, match=r"model option scale=tensor"):
        model_config("ce", "classification", "resnet8", 3, {"scale": torch.ones(1)})
    with pytest.raises(TypeError, match="arch must be a registered or timm name"):
        model_config("ce", "classification", torch.nn.Identity(), 3, {})
    with pytest.raises(ValueError, match="unknown classification method 'nope'"):
        model_config("nope", "classification", "resnet8", 3, {})
    with pytest.raises(ValueError, match="not a model config"):
        build_from_config({"method": "ce", "arch": "resnet8"})
    # another program's field of that name is not taken for ours
    state = build_model("ce", "resnet8", NUM_CLASSES).state_dict()
    assert "model_config" not in unwrap({"model": state, "model_config": {"hidden_size": 64}})[1]
    assert unwrap({"model": state, "model_config": cfg})[1]["arch"] == "resnet8"


def test_a_recorded_model_config_rebuilds_options_no_flag_or_tensor_tells(data, tmp_path):
    """A file with only weights and its model_config: ResLT's branches and evaluation gamma,
    a ViT GPaCo's ReLU projection (its builder's own choice would be GELU) come back as built."""
    root, test_list = data
    options = {"branch_sizes": [2, 1], "head": "bn", "eval_gamma": 0.5}
    reslt = randomize(build_model("reslt", "resnet8", NUM_CLASSES, **options))
    path = tmp_path / "reslt.pth"
    save_checkpoint({"model": reslt.state_dict(),
                     "model_config": model_config("reslt", "classification", "resnet8", NUM_CLASSES, options)}, path)
    res = evaluator.main(eval_args(root, test_list, tmp_path / "ev", "--checkpoint", str(path)))
    assert res["checkpoints"][0]["method"] == "reslt" and not res["checkpoints"][0]["missing"]
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "ev" / "logits.npy")), direct_logits(reslt, test_list, root))
    vit_options = {"proj_dim": 8, "queue_size": 16, "projection_act": "relu", "backbone_kwargs": {"img_size": IMG}}
    vit = build_model("gpaco", "mae_vit_tiny_d2_patch8", NUM_CLASSES, **vit_options)
    save_checkpoint({"model": vit.state_dict(), "model_config": model_config(
        "gpaco", "classification", "mae_vit_tiny_d2_patch8", NUM_CLASSES, vit_options)}, tmp_path / "vit.pth")
    rebuilt, report = build_model_from_checkpoint(read_checkpoint(str(tmp_path / "vit.pth")))
    assert type(rebuilt.encoder.projection).__name__ == "GPaCoProjection" and not report.missing
    # asking for another model (here the plain classifier) infers it as for files without a config
    rebuilt, report = build_model_from_checkpoint(read_checkpoint(str(tmp_path / "vit.pth")), method="ce")
    assert report.method == "ce" and not report.missing and type(rebuilt).__name__ == "Classifier"
    seg = {"model": vit.state_dict(), "model_config": {**model_config("ce", "segmentation", "r18", 3, {})}}
    save_checkpoint(seg, tmp_path / "seg.pth")
    with pytest.raises(CheckpointError, match="holds a segmentation model: evaluate it with tools/eval_seg.py"):
        build_model_from_checkpoint(read_checkpoint(str(tmp_path / "seg.pth")))


def test_a_segmentation_checkpoint_is_rebuilt_from_its_model_config(tmp_path):
    """tools/eval_seg.py: a file with only weights and its model_config (a non-default pixel
    embedding size) loads strictly; --method ce asks for the plain model instead."""
    from gpaco.data.seg_datasets import SEG_DATASETS
    from gpaco.segmentation import evaluate as seg_eval

    classes = SEG_DATASETS["demo"].num_classes
    model = build_model("gpaco", "r18", classes, task="segmentation", embed_dim=16)
    cfg = model_config("gpaco", "segmentation", "r18", classes, {"embed_dim": 16, "encoder": None})
    save_checkpoint({"model": model.state_dict(), "model_config": cfg}, tmp_path / "seg.pth")
    argv = ["--checkpoint", str(tmp_path / "seg.pth"), "--dataset", "demo", "--data-root", str(tmp_path / "absent"),
            "--workers", "0", "--dry-run"]
    assert 0.0 <= seg_eval.main(argv)["miou"] <= 100.0
    assert 0.0 <= seg_eval.main(argv + ["--method", "ce"])["miou"] <= 100.0  # the embedding is training-only


def test_files_without_a_method_get_the_smallest_model_that_holds_them():
    """The original's layouts name no method: their roles pick it (the registry rows' prefixes)."""
    assert method_for_roles(("backbone", "classifier")) == "ce"  # torchvision / MAE classifiers
    assert method_for_roles(("backbone", "projection", "classifier", "queue")) == "gpaco"  # GPaCo ResNets, ViTs
    assert method_for_roles(("backbone", "projection", "backbone_k", "projection_k", "classifier", "queue")) == "paco"
    assert method_for_roles(("backbone", "decoder")) is None


def test_torchvision_classifier_layout():
    model = build_model("ce", "resnet8", NUM_CLASSES)
    sd = {("fc." + k[3:] if k.startswith("fc.") else k[len("backbone."):]): v for k, v in model.state_dict().items()}
    assert detect_layout(sd) == "classifier"
    assert detect_layout({"foo.weight": torch.zeros(1)}) is None


@pytest.fixture(autouse=True)
def _tools_on_path(monkeypatch):
    """Import tools/convert_checkpoint.py as `tools_convert`."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "tools" / "convert_checkpoint.py"
    spec = importlib.util.spec_from_file_location("tools_convert", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "tools_convert", module)
