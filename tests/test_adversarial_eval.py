"""tools/eval_adversarial.py and gpaco.classification.adversarial_eval: PGD-20 / CW-20 against a
hand-computed worst case, AutoAttack through pyautoattack, and the per-batch resume (a stop
half-way, a signal, changed flags refused in one line)."""
from __future__ import annotations

import json
import os
import signal
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from gpaco.checkpoint import save_checkpoint
from gpaco.classification import adversarial_eval as ae
from gpaco.engine.cli import run_cli
from gpaco.methods.rebuild import build_model
from gpaco.models.kd_zoo import to_original_state_dict

EPS = 8 / 255


class Counting(nn.Module):
    """Counts the forward calls of the network it wraps."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def linear(in_features: int, classes: int, seed: int, scale: float = 0.5) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    fc = nn.Linear(in_features, classes)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(fc.weight.shape, generator=g) * scale)
        fc.bias.copy_(torch.randn(fc.bias.shape, generator=g) * scale)
    return nn.Sequential(nn.Flatten(), fc)


def random_images(n: int, seed: int, shape=(3, 4, 4)) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the attacks


def test_pgd_and_cw_reach_the_closed_form_worst_case_of_a_linear_model():
    """Two classes, logits W x + b: the margin z_y - z_o = s . x + c with s = w_y - w_o is
    smallest, over the L∞ ball of radius eps intersected with [0, 1], at x_i - min(eps, x_i)
    where s_i > 0 and x_i + min(eps, 1 - x_i) where s_i < 0. Both objectives' sign gradients
    point there from any start, and 20 steps of 2/255 cover the 16/255 between any start and
    that corner, so an image is robust exactly when it is right and that margin stays > 0."""
    net = linear(48, 2, seed=0)
    model = ae.PixelSpaceModel(net)
    x = random_images(96, seed=1)
    w, b = net[1].weight.double(), net[1].bias.double()
    with torch.no_grad():
        clean_pred = model(x).argmax(1)
    y = clean_pred.clone()
    y[::7] = 1 - y[::7]  # a few wrong labels: never robust
    xf = x.flatten(1).double()
    s = (w[y] - w[1 - y])
    room = torch.where(s > 0, xf, 1 - xf).clamp(max=EPS)
    worst = (s * xf).sum(1) + (b[y] - b[1 - y]) - (s.abs() * room).sum(1)
    assert worst.abs().min() > 1e-4  # no image on the boundary: the verdict cannot flip with rounding
    expected = (clean_pred == y) & (worst > 0)
    assert 10 < int(expected.sum()) < 80  # some robust, some broken by the attack
    settings = ae.AttackSettings(epsilon=EPS, step_size=2 / 255, steps=20)
    for attack in ("pgd20", "cw20"):
        result = ae.attack_batch(attack, model, x, y, settings, batch_index=3)
        assert torch.equal(result.clean, clean_pred == y)
        assert torch.equal(result.robust, expected), attack
    clean = ae.attack_batch("clean", model, x, y, settings, batch_index=3)
    assert torch.equal(clean.robust, clean_pred == y)


def test_pgd_counts_an_image_broken_on_the_way_as_broken():
    """An image misclassified at any point the attack tries stays broken, even when the last
    iterate is classified right again: here class 1 means 'mean brightness > 0.51', the first
    image starts at 0.52 and the objective darkens both images step by step."""
    x = torch.full((2, 1, 2, 2), 0.5)
    y = torch.tensor([0, 0])
    start = torch.tensor([0.02, -0.02]).view(2, 1, 1, 1).expand_as(x).clone()

    def model(images):
        m = images.flatten(1).mean(1) - 0.51
        return 100 * torch.stack([-m, m], 1)

    robust = ae.pgd_robust(model, x, y, lambda z, t: z[:, 0].sum(), epsilon=0.03, step_size=0.01, steps=3,
                           start=start)
    assert robust.tolist() == [False, True]
    assert (model(x + start).argmax(1).tolist(), model(x - 0.03).argmax(1).tolist()) == ([1, 0], [0, 0])


def test_pixel_space_model_normalises_and_stays_in_eval_mode():
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 4))
    model = ae.PixelSpaceModel(net, mean=(0.5, 0.4, 0.3), std=(0.2, 0.1, 0.25))
    model.train()
    assert not model.training and not net.training
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.rand(5, 3, 2, 2)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.1, 0.25]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), net((x - mean) / std))
    assert "mean" not in model.state_dict()  # the weights' digest is the network's alone
    with pytest.raises(ValueError, match="both mean and std"):
        ae.PixelSpaceModel(net, mean=(0.5,) * 3)


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 2))


def test_batch_seed_alone_draws_each_batchs_random_start():
    """steps 0: PGD's verdict is the model's on its random start, which must depend on (seed,
    attack, batch index) and on nothing else (not torch's global generator)."""
    seeds = {ae.batch_seed(s, a, i) for s in (0, 1) for a in ae.ATTACKS for i in range(50)}
    assert len(seeds) == 2 * len(ae.ATTACKS) * 50 and all(0 <= s < 2 ** 63 for s in seeds)
    model = ae.PixelSpaceModel(mlp(0))
    x = random_images(200, seed=2)
    with torch.no_grad():
        y = model(x).argmax(1)
    settings = ae.AttackSettings(epsilon=0.3, steps=0)
    torch.manual_seed(123)
    first = ae.attack_batch("pgd20", model, x, y, settings, batch_index=5).robust
    torch.manual_seed(456)
    assert torch.equal(ae.attack_batch("pgd20", model, x, y, settings, batch_index=5).robust, first)
    assert not torch.equal(ae.attack_batch("pgd20", model, x, y, settings, batch_index=6).robust, first)
    assert not torch.equal(ae.attack_batch("cw20", model, x, y, settings, batch_index=5).robust, first)
    other_seed = ae.AttackSettings(epsilon=0.3, steps=0, seed=1)
    assert not torch.equal(ae.attack_batch("pgd20", model, x, y, other_seed, batch_index=5).robust, first)


def test_autoattack_on_a_few_images_is_no_weaker_than_pgd():
    pytest.importorskip("pyautoattack")
    net = linear(48, 10, seed=4, scale=0.3)
    model = ae.PixelSpaceModel(net)
    x = random_images(6, seed=5)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 10  # one wrong label
    settings = ae.AttackSettings(epsilon=2 / 255)
    aa = ae.attack_batch("autoattack", model, x, y, settings, batch_index=0)
    pgd = ae.attack_batch("pgd20", model, x, y, settings, batch_index=0)
    assert torch.equal(aa.clean, pgd.clean) and not aa.clean[0]
    assert not (aa.robust & ~aa.clean).any() and not (aa.robust & ~pgd.robust).any()
    assert 0 < int(aa.robust.sum()) < int(aa.clean.sum())  # AutoAttack broke some, not all
    stages = aa.extra["stages"]
    assert list(stages) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    counts = [int(aa.clean.sum()), *stages.values()]
    assert counts == sorted(counts, reverse=True) and counts[-1] == int(aa.robust.sum())
    assert aa.extra["outside_ball"] == 0


# --------------------------------------------------------------------------- resume


#: few steps from a wide start: the verdicts depend on each batch's random start, so a resume
#: that drew them differently would not match the uninterrupted run
FEW_STEPS = ae.AttackSettings(attacks=("clean", "pgd20", "cw20"), epsilon=24 / 255, step_size=4 / 255, steps=2)
PGD_CALLS = 1 + FEW_STEPS.steps + 1  # the clean forward, one per step, the result


def tensor_data(n: int = 40, seed: int = 6):
    x = random_images(n, seed)
    net = mlp(7)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::9] = 1 - y[::9]
    return TensorDataset(x, y), net


def run(out, net, dataset, **kw):
    kw.setdefault("settings", FEW_STEPS)
    return ae.evaluate_robustness(ae.PixelSpaceModel(net), dataset, output_dir=str(out), batch_size=8,
                                  identity={"model": {"weights_sha256": ae.weights_sha256(getattr(net, "net", net))}},
                                  log=lambda line: None, **kw)


def flags(out, attack):
    state = ae.ResumeState.open(str(out / ae.STATE_NAME), json.loads((out / ae.STATE_NAME).read_text())["identity"],
                                ae.batch_grid(40, 8))
    return [t.tolist() for t in state.flags(attack)]


def test_stop_half_way_then_resume_repeats_no_batch_and_equals_an_uninterrupted_run(tmp_path):
    dataset, net = tensor_data()
    whole = run(tmp_path / "whole", net, dataset)
    assert whole["complete"] and [r["images"] for r in whole["rows"]] == [40, 40, 40]
    clean, pgd, cw = (r["correct"] for r in whole["rows"])
    assert 0 < pgd < clean and 0 < cw < clean

    counting = Counting(net)
    part = run(tmp_path / "split", counting, dataset, stop_after_batches=7)  # clean: 5 batches, pgd20: 2 of 5
    assert part == {**part, "complete": False, "stopped": "--stop-after-batches 7"}
    assert not (tmp_path / "split" / ae.RESULT_NAME).exists()
    assert counting.calls == 5 * 1 + 2 * PGD_CALLS  # clean: one forward a batch
    counting.calls = 0
    resumed = run(tmp_path / "split", counting, dataset)
    assert counting.calls == 3 * PGD_CALLS + 5 * PGD_CALLS  # the 3 pgd20 batches left, cw20's 5: nothing again
    assert resumed["rows"] == [{**r, "seconds": s["seconds"]} for r, s in zip(whole["rows"], resumed["rows"])]
    for attack in ("clean", "pgd20", "cw20"):
        assert flags(tmp_path / "split", attack) == flags(tmp_path / "whole", attack)
    state = json.loads((tmp_path / "split" / ae.STATE_NAME).read_text())
    assert [state["batches"]["pgd20"][str(i)]["session"] for i in range(5)] == [1, 1, 2, 2, 2]
    assert json.loads((tmp_path / "split" / ae.RESULT_NAME).read_text())["rows"] == resumed["rows"]
    counting.calls = 0  # a finished evaluation run again: nothing recomputed, the same result
    assert run(tmp_path / "split", counting, dataset)["rows"] == resumed["rows"] and counting.calls == 0


def test_a_stop_signal_ends_the_run_after_the_batch_it_arrives_in(tmp_path):
    dataset, net = tensor_data()

    class SignalsOnce(Counting):
        def forward(self, x):
            if self.calls == 5 + PGD_CALLS + 1:  # inside the second pgd20 batch
                os.kill(os.getpid(), signal.SIGTERM)
            return super().forward(x)

    part = run(tmp_path / "out", SignalsOnce(net), dataset)
    assert part["complete"] is False and part["stopped"] == "SIGTERM"
    state = json.loads((tmp_path / "out" / ae.STATE_NAME).read_text())
    assert sorted(state["batches"]["pgd20"]) == ["0", "1"]  # the running batch was finished and saved
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
    resumed = run(tmp_path / "out", net, dataset)
    whole = run(tmp_path / "whole", net, dataset)
    assert [r["correct"] for r in resumed["rows"]] == [r["correct"] for r in whole["rows"]]


def test_a_resume_with_other_settings_is_refused_naming_the_flag(tmp_path):
    dataset, net = tensor_data()
    run(tmp_path, net, dataset, stop_after_batches=1)
    with pytest.raises(SystemExit, match=r"--batch-size 4 \(was 8\)") as e:
        ae.evaluate_robustness(ae.PixelSpaceModel(net), dataset, output_dir=str(tmp_path), batch_size=4,
                               identity={"model": {"weights_sha256": ae.weights_sha256(net)}}, log=lambda s: None,
                               settings=FEW_STEPS)
    assert str(e.value.code).count("(was ") == 1  # only the flag that changed
    with pytest.raises(SystemExit, match=r"--attacks clean pgd20 \(was clean pgd20 cw20\)"):
        run(tmp_path, net, dataset, settings=ae.AttackSettings(attacks=("clean", "pgd20"), epsilon=24 / 255,
                                                               step_size=4 / 255, steps=2))
    with pytest.raises(SystemExit, match=r"--epsilon 4 \(was 24\)"):
        run(tmp_path, net, dataset, settings=ae.AttackSettings(attacks=("clean", "pgd20", "cw20"), epsilon=4 / 255,
                                                               step_size=4 / 255, steps=2))
    other = mlp(8)
    with pytest.raises(SystemExit, match=r"--checkpoint/--weights weights sha256 \w{12} \(was weights sha256"):
        run(tmp_path, other, dataset)
    done = run(tmp_path, net, dataset, overwrite=False)  # the same settings continue
    assert done["complete"]
    again = run(tmp_path, other, dataset, overwrite=True)  # --overwrite starts again
    assert again["complete"] and again["session"] == 1


# --------------------------------------------------------------------------- the command line

IMG = 8


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """12 random 8x8 RGB images of 10 classes, and a CE resnet8 checkpoint trained on nothing."""
    root = tmp_path_factory.mktemp("advdata")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        (root / "img").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (IMG, IMG, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png {i % 10}")
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("ce", "resnet8", 10).eval()
        save_checkpoint({"model": model.state_dict(), "arch": "resnet8", "method": "ce", "num_classes": 10,
                         "args": {"arch": "resnet8", "method": "ce", "norm": "mnist", "image_size": IMG}},
                        root / f"run{seed}" / "best.pth")
    return root


def cli_args(split, out, *extra, batch_size=5):
    return ["--data-root", str(split), "--test-list", str(split / "test.txt"), "--workers", "0", "--batch-size",
            str(batch_size), "--attacks", "clean", "pgd20", "--output-dir", str(out), *extra]


def one_error_line(capsys, argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(ae.main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cli_resumes_and_refuses_other_settings_in_one_line(split, tmp_path, capsys):
    out = tmp_path / "out"
    part = ae.main(cli_args(split, out, "--checkpoint", str(split / "run0"), "--stop-after-batches", "2"))
    assert part["complete"] is False
    err = one_error_line(capsys, cli_args(split, out, "--checkpoint", str(split / "run0"), batch_size=4))
    assert "--batch-size 4 (was 5)" in err and "--attacks" not in err
    err = one_error_line(capsys, cli_args(split, out, "--checkpoint", str(split / "run1" / "best.pth")))
    assert "--checkpoint/--weights weights sha256" in err and "--batch-size" not in err
    err = one_error_line(capsys, cli_args(split, out, "--checkpoint", str(split / "run0"), "--norm", "none"))
    assert "--norm/--image-size/--resize-size/--interpolation norm none" in err
    done = ae.main(cli_args(split, out, "--checkpoint", str(split / "run0")))
    assert done["complete"] and done["info"]["checkpoint"] == str(split / "run0" / "best.pth")
    clean, pgd = done["rows"]
    assert clean["images"] == pgd["images"] == 12 and pgd["correct"] <= clean["correct"]
    written = json.loads((out / ae.RESULT_NAME).read_text())
    assert written["rows"] == done["rows"] and written["protocol"]["epsilon_255"] == 8
    assert "| pgd20 |" in capsys.readouterr().out


def test_cli_reads_an_original_dataparallel_state_dict_like_the_gpaco_checkpoint(split, tmp_path):
    """--weights FILE --arch --num-classes: 'module.' keys in the original's layout; the same
    weights through --checkpoint give the same per-image flags."""
    ours = torch.load(split / "run0" / "best.pth", weights_only=True)["model"]
    original = OrderedDict(("module." + k, v) for k, v in to_original_state_dict(ours, "resnet8").items())
    torch.save(original, tmp_path / "model-epoch200.pt")
    a = ae.main(cli_args(split, tmp_path / "a", "--checkpoint", str(split / "run0")))
    b = ae.main(cli_args(split, tmp_path / "b", "--weights", str(tmp_path / "model-epoch200.pt"), "--arch", "resnet8",
                         "--num-classes", "10", "--norm", "mnist"))
    assert [r["correct"] for r in a["rows"]] == [r["correct"] for r in b["rows"]]
    assert a["identity"]["model"] == b["identity"]["model"]  # the same weights, wherever they came from


def test_cli_bad_inputs_are_one_line(split, tmp_path, capsys, monkeypatch):
    err = one_error_line(capsys, cli_args(split, tmp_path, "--checkpoint", str(tmp_path / "typo" / "best.pth")))
    assert err == f"error: --checkpoint {tmp_path / 'typo' / 'best.pth'}: no such file or folder"
    assert not (tmp_path / "typo").exists()
    err = one_error_line(capsys, cli_args(split, tmp_path, "--checkpoint", str(tmp_path)))
    assert "the folder has no best.pth" in err
    err = one_error_line(capsys, cli_args(split, tmp_path, "--weights", str(split / "run0" / "best.pth")))
    assert "--weights needs --arch and --num-classes" in err
    err = one_error_line(capsys, cli_args(split, tmp_path))
    assert "--checkpoint RUN_OR_FILE, or as --weights" in err
    err = one_error_line(capsys, [*cli_args(split, tmp_path, "--checkpoint", str(split / "run0")), "--attacks",
                                  "pgd20", "pgd20"])
    assert err == "error: --attacks names a row twice: pgd20 pgd20"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ae.STATE_NAME).write_text("{not json")
    err = one_error_line(capsys, cli_args(split, tmp_path / "out", "--checkpoint", str(split / "run0")))
    assert err.startswith(f"error: {tmp_path / 'out' / ae.STATE_NAME} is not a state this tool wrote (")
    assert err.endswith("remove it, or pass --overwrite to start again")
    monkeypatch.setattr(ae, "autoattack_available", lambda: False)
    err = one_error_line(capsys, [*cli_args(split, tmp_path, "--checkpoint", str(split / "run0")), "--attacks",
                                  "autoattack"])
    assert err == "error: --attacks autoattack needs the optional package pyautoattack: pip install " \
                  "'gpaco[autoattack]'"


def test_cli_dry_run_checks_every_row_and_writes_nothing(tmp_path, capsys):
    """--dry-run without the checkpoint or the data (what a recipe's dry run sees): random
    weights, synthetic images, every row with a token budget, nothing written."""
    pytest.importorskip("pyautoattack")
    result = ae.main(["--checkpoint", str(tmp_path / "absent" / "best.pth"), "--arch", "resnet8", "--dataset",
                      "cifar10", "--data-root", str(tmp_path / "no-data"), "--norm", "none", "--image-size", "8",
                      "--output-dir", str(tmp_path / "out"), "--dry-run"])
    assert result["dry_run"] is True and result["complete"]
    assert [r["attack"] for r in result["rows"]] == list(ae.ATTACKS) and result["rows"][0]["accuracy"] == 100
    assert result["identity"]["autoattack_budget"] == 1 and result["identity"]["steps"] == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "absent").exists()
    out = capsys.readouterr().out
    assert "dry run ok: clean, pgd20, cw20, autoattack ran on 2 images" in out and "\nwrote " not in out


def ridge_fitted_resnet8(demo_data: Path, size: int) -> nn.Module:
    """A CE resnet8 whose random features get a least-squares classifier fitted on the demo
    digits at ``size`` px (seconds, no training): right on most test digits, so that the attacks
    have something to break."""
    from torch.utils.data import DataLoader

    from gpaco.data.splits import SplitDataset
    from gpaco.data.transforms import NORMALIZATION, build_eval_transform

    torch.manual_seed(0)
    model = build_model("ce", "resnet8", 10).eval()
    mean, std = NORMALIZATION["mnist"]
    train = SplitDataset(demo_data / "train.txt", demo_data, build_eval_transform(size, resize_size=size, mean=mean,
                                                                                   std=std), num_classes=10)
    x, y = next(iter(DataLoader(train, batch_size=len(train))))
    with torch.no_grad():
        features = torch.cat([model.backbone(x), torch.ones(len(x), 1)], 1).double()
    targets = torch.nn.functional.one_hot(y, 10).double()
    w = torch.linalg.solve(features.T @ features + 1e-3 * torch.eye(features.shape[1], dtype=torch.double),
                           features.T @ targets)
    with torch.no_grad():
        model.fc.weight.copy_(w[:-1].T)
        model.fc.bias.copy_(w[-1])
    return model


@pytest.mark.slow
@pytest.mark.full  # a minute; the stop/resume logic is tested above in seconds (with model-call counts)
def test_cli_autoattack_on_demo_digits_resumes_to_the_same_numbers(demo_data, tmp_path):
    """The demo digits through the whole tool, AutoAttack included: stopped inside the AutoAttack
    rows, resumed, and equal to an uninterrupted run image for image."""
    pytest.importorskip("pyautoattack")
    model = ridge_fitted_resnet8(demo_data, size=8)  # 8 px digits: AutoAttack's cost is per batch, kept small
    save_checkpoint({"model": model.state_dict(), "arch": "resnet8", "method": "ce", "num_classes": 10,
                     "args": {"arch": "resnet8", "method": "ce", "norm": "mnist", "image_size": 8}},
                    tmp_path / "run" / "best.pth")
    lines = (demo_data / "test.txt").read_text().splitlines()
    (tmp_path / "mixed.txt").write_text("\n".join(lines[::50]) + "\n")  # two digits of each class, in class order
    argv = ["--checkpoint", str(tmp_path / "run"), "--data-root", str(demo_data), "--test-list",
            str(tmp_path / "mixed.txt"), "--max-images", "12", "--batch-size", "6", "--workers", "0",
            "--epsilon", "8"]
    part = ae.main([*argv, "--output-dir", str(tmp_path / "a"), "--stop-after-batches", "7"])
    assert part["complete"] is False  # clean, pgd20, cw20 and the first AutoAttack batch are done
    split = ae.main([*argv, "--output-dir", str(tmp_path / "a")])
    whole = ae.main([*argv, "--output-dir", str(tmp_path / "b")])
    assert [r["correct"] for r in split["rows"]] == [r["correct"] for r in whole["rows"]]
    clean, pgd, cw, aa = (r["correct"] for r in whole["rows"])
    assert 0 < aa <= min(pgd, cw) and max(pgd, cw) < clean  # something to break, something robust
    a, b = (json.loads((tmp_path / d / ae.STATE_NAME).read_text())["batches"] for d in "ab")
    assert {k: {i: r["robust"] for i, r in v.items()} for k, v in a.items()} == \
        {k: {i: r["robust"] for i, r in v.items()} for k, v in b.items()}
    assert [a["autoattack"][i]["session"] for i in "01"] == [1, 2]
    stages = whole["autoattack_stages"]
    assert [s["stage"] for s in stages] == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert stages[0]["accuracy"] == 100 * clean / 12 and stages[-1]["accuracy"] == 100 * aa / 12
