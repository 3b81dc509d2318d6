"""Evaluation throughput: ``tools/eval.py`` against a bare inference loop.

Both read the same JPEG test split (photographs ~500x375, see ``_common.make_photos``)
with the standard val transform (Resize 256 > CenterCrop 224 > ToTensor > Normalize),
batch 16, data loading in the main process (``--workers 0``, so both sides do the same
work in the timed process), ResNet-50 with 1000 classes.

* ours: ``gpaco.classification.evaluate.main`` (what ``tools/eval.py`` runs): checkpoint load,
  model build, ``SplitDataset`` + ``eval_loader``, the inference loop with the full
  ``ClassificationMeter`` (top-1/5, per-class, many/medium/few), metrics.json and the
  per-class report (csv + plot). The loop is timed inside that run by wrapping it.
* bare: ``torch.load`` + timm ``resnet50`` + ``load_state_dict``, a minimal PIL dataset
  with torchvision transforms, ``DataLoader``, ``model(x).argmax(1) == y``.

Rows: the loop's images/s (ours / bare, the steady state), and the whole run's images/s
extrapolated to the 50,000-image ImageNet-LT test split from the measured fixed cost
(everything but the loop) and per-image cost; the directly measured end-to-end ratio at
the bench's N is shown for information.

    python bench/eval_speed.py [--quick] [--images 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

import torch
from PIL import Image
from torchvision import transforms as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

import gpaco.classification.evaluate as evaluator  # noqa: E402
from gpaco.checkpoint import save_checkpoint  # noqa: E402
from gpaco.methods.rebuild import build_model  # noqa: E402

TARGET = 0.95
NUM_CLASSES = 1000
BATCH = 16
FULL_SPLIT = 50_000  # ImageNet-LT test


class BareDataset(torch.utils.data.Dataset):
    def __init__(self, list_path, root):
        with open(list_path) as f:
            self.samples = [(os.path.join(root, line.split()[0]), int(line.split()[1])) for line in f if line.strip()]
        self.transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.transform(img), label


def bare_eval(ckpt_path, list_path, root):
    """(total seconds, loop seconds, top-1 count)."""
    t0 = time.perf_counter()
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["model"]
    model = C.bare_resnet50(NUM_CLASSES)
    model.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items()})
    model.eval()
    loader = torch.utils.data.DataLoader(BareDataset(list_path, root), batch_size=BATCH, num_workers=0)
    t1 = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1, correct


class LoopTimer:
    """Wraps the evaluator's inference loop (``predict``; ``evaluate`` in older versions) to
    time it inside a real tools/eval.py run."""

    def __init__(self):
        self.name = "predict" if hasattr(evaluator, "predict") else "evaluate"
        self.inner = getattr(evaluator, self.name)
        self.seconds = 0.0

    def __call__(self, *a, **kw):
        t0 = time.perf_counter()
        out = self.inner(*a, **kw)
        self.seconds = time.perf_counter() - t0
        return out


def ours_eval(ckpt_path, list_path, root, out_dir):
    timer = LoopTimer()
    setattr(evaluator, timer.name, timer)
    argv = ["--checkpoint", ckpt_path, "--data-root", root, "--test-list", list_path, "--batch-size", str(BATCH),
            "--workers", "0", "--output-dir", out_dir, "--overwrite"]  # every round writes the same folder
    try:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.main(argv)
        total = time.perf_counter() - t0
    finally:
        setattr(evaluator, timer.name, timer.inner)
    with open(os.path.join(out_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert "many" in metrics and "per_class" in metrics, "eval ran without the LT bookkeeping"
    assert timer.seconds > 0, "the inference loop was not timed"
    return total, timer.seconds, metrics


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--images", type=int, default=None, help="test images (default 96, quick 48)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5, quick 3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    n = args.images or (48 if args.quick else 96)
    repeats = args.repeats or (3 if args.quick else 5)
    C.set_threads(args.threads)
    load = C.LoadMeter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = C.make_photos(os.path.join(tmp, "val"), n=n)
        list_path = os.path.join(tmp, "test.txt")
        C.write_split(paths, tmp, list_path, NUM_CLASSES)
        torch.manual_seed(0)
        model = build_model("ce", "resnet50", NUM_CLASSES)
        counts = [max(1, int(1280 * 256 ** (-c / (NUM_CLASSES - 1)))) for c in range(NUM_CLASSES)]
        ckpt = os.path.join(tmp, "best.pth")
        save_checkpoint({"model": model.state_dict(), "num_classes": NUM_CLASSES, "class_counts": counts,
                         "arch": "resnet50", "method": "ce", "epoch": 1,
                         "args": {"method": "ce", "arch": "resnet50", "image_size": 224, "norm": "imagenet"}},
                        ckpt)
        del model
        res = {"ours": [], "bare": []}

        def run_ours():
            res["ours"].append(ours_eval(ckpt, list_path, tmp, os.path.join(tmp, "eval")))
            return res["ours"][-1][0]

        def run_bare():
            res["bare"].append(bare_eval(ckpt, list_path, tmp))
            return res["bare"][-1][0]

        C.interleave({"ours": run_ours, "bare": run_bare}, repeats, warmup=1)
    ours, bare = res["ours"][1:], res["bare"][1:]  # drop the warm-up round
    assert all(o[2]["num_samples"] == n for o in ours)
    # top-1 agreement: same weights, same transforms -> same predictions
    top1_ours = round(ours[0][2]["top1"] * n / 100)
    if top1_ours != bare[0][2]:
        print(f"warning: top-1 counts differ (ours {top1_ours}, bare {bare[0][2]})")
    loop_ratio = C.paired_ratio([b[1] for b in bare], [o[1] for o in ours])  # img/s ours / bare
    e2e_ratio = C.paired_ratio([b[0] for b in bare], [o[0] for o in ours])
    per_img_o = C.median(o[1] for o in ours) / n
    per_img_b = C.median(b[1] for b in bare) / n
    fixed_o = C.median(o[0] - o[1] for o in ours)
    fixed_b = C.median(b[0] - b[1] for b in bare)
    full_ratio = (fixed_b + FULL_SPLIT * per_img_b) / (fixed_o + FULL_SPLIT * per_img_o)
    rows = [
        C.Row("eval", "eval loop img/s (tools/eval.py / bare loop)", loop_ratio, TARGET, ">=",
              f"{1 / per_img_o:.1f} vs {1 / per_img_b:.1f} img/s"),
        C.Row("eval", f"tools/eval.py run img/s, {FULL_SPLIT} images (/ bare)", full_ratio, TARGET, ">=",
              f"fixed cost {fixed_o:.2f} s vs {fixed_b:.2f} s (extrapolated from N={n})"),
        C.Row("eval", f"tools/eval.py run img/s, N={n} as measured (/ bare)", e2e_ratio, None, ">=",
              "includes checkpoint load, model build, report files"),
    ]
    info = load.stop()
    print(f"eval: ResNet-50, C={NUM_CLASSES}, {n} JPEGs, batch {BATCH}, workers 0, {args.threads} thread(s), "
          f"{repeats} rounds; other processes used {info['other_cores'] or 0:.2f} cores meanwhile")
    C.print_rows(rows)
    C.rows_to_json(rows, args.json, {"load": info})
    return C.exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
