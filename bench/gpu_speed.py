"""GPU throughput: ResNet-50 CE, PaCo and GPaCo in bf16 with channels_last, eager and compiled.

Synthetic data already on the device (so the input pipeline is out of the picture), the
real engine pieces (``build_model`` + ``Criterion`` + ``train_one_epoch`` with
``amp='bf16'``, ``channels_last=True``; ``torch.compile(model)`` as ``tools/train.py
--compile`` does), and a bare loop (timm resnet50 + F.cross_entropy + SGD under the same
autocast/channels_last) as the baseline of the CE recipe. Configurations run interleaved;
each figure is the median over rounds of ``--steps`` steps.

Also the ViT-B/16 fine-tuning step (MAE recipe: AdamW with layer decay, no channels_last),
GPaCo at B/2 per view against CE at B.

Prints images/s (and samples/s: a GPaCo sample is two images), the ratios
GPaCo(B) / CE(2B) step time (same images per step), our CE / bare CE, compiled / eager,
and the peak GPU memory of each configuration. Run through ``bench/gpu.sh``.

    python bench/gpu_speed.py [--batch 128] [--steps 20] [--rounds 3] [--no-compile]
    python bench/gpu_speed.py --device cpu --tiny   # smoke test of the script itself
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from gpaco.methods import build_criterion  # noqa: E402
from gpaco.classification.loop import train_one_epoch  # noqa: E402
from gpaco.engine.optim import build_optimizer  # noqa: E402
from gpaco.models import build_model  # noqa: E402

NUM_CLASSES, QUEUE = 1000, 8192


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(method, batch, size, steps, device, channels_last):
    g = torch.Generator(device="cpu").manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
    views = 2 if method in ("paco", "gpaco") else 1
    xs = [torch.randn(batch, 3, size, size, generator=g).to(device).contiguous(memory_format=fmt)
          for _ in range(views)]
    x = xs if views == 2 else xs[0]
    return [(x, y)] * steps


class EngineRun:
    def __init__(self, method, batch, size, steps, device, compile_, channels_last=True, amp="bf16", arch="resnet50"):
        torch.manual_seed(0)
        self.device, self.amp, self.channels_last = device, amp, channels_last
        counts = [max(1, int(1280 * 256 ** (-c / (NUM_CLASSES - 1)))) for c in range(NUM_CLASSES)]
        vit = arch.startswith("mae_vit")
        kw = {"backbone_kwargs": {"img_size": size}, "drop_path_rate": 0.1} if vit else {}
        model = build_model(method, arch, NUM_CLASSES, queue_size=QUEUE, global_batch=batch, **kw).to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.criterion = build_criterion(method, class_counts=counts).to(device)
        if vit:  # MAE fine-tuning's optimizer, as the ViT recipes
            self.opt = build_optimizer(model, name="adamw", lr=1e-4, wd=0.05, layer_decay=0.75)
        else:
            self.opt = build_optimizer(model, lr=1e-4, momentum=0.9, wd=5e-4)  # as tools/train.py
        self.model = torch.compile(model) if compile_ else model
        self.data = make_batches(method, batch, size, steps, device, channels_last)
        self.images_per_step = batch * (2 if method in ("paco", "gpaco") else 1)

    def __call__(self):
        sync(self.device)
        t0 = time.perf_counter()
        train_one_epoch(self.model, self.criterion, self.data, self.opt, None, epoch=0, device=self.device,
                        amp=self.amp, channels_last=self.channels_last, print_freq=0)
        sync(self.device)
        return (time.perf_counter() - t0) / len(self.data)


class BareRun:
    def __init__(self, batch, size, steps, device, compile_, channels_last=True):
        torch.manual_seed(0)
        self.device = device
        model = C.bare_resnet50(NUM_CLASSES).to(device).train()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        self.model = torch.compile(model) if compile_ else model
        self.data = make_batches("ce", batch, size, steps, device, channels_last)
        self.images_per_step = batch

    def __call__(self):
        sync(self.device)
        t0 = time.perf_counter()
        for x, y in self.data:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                out = self.model(x)
            loss = F.cross_entropy(out.float(), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        sync(self.device)
        return (time.perf_counter() - t0) / len(self.data)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=128, help="B: GPaCo per-view batch; CE runs at 2B")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20, help="steps per timed unit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--tiny", action="store_true", help="batch 2, 32px, 1 step, 1 round (smoke test)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.tiny:
        args.batch, args.image_size, args.steps, args.rounds = 2, 32, 1, 1
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device: nothing measured (bench/gpu.sh needs a GPU)")
            return 2
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({C.cpu_model()})"
    B, S, n = args.batch, args.image_size, args.steps
    # ViT-B/16 fine-tuning (tiny: the 2-block test ViT): CE at VB images, GPaCo at VB/2 per view.
    vit, VB = ("mae_vit_tiny_d2_patch8", 2 * B) if args.tiny else ("mae_vit_base_patch16", B)
    modes = [False] if args.no_compile else [False, True]
    results = {}
    for comp in modes:
        tag = "compiled" if comp else "eager"
        runs = {f"bare_ce_{tag}": lambda: BareRun(2 * B, S, n, device, comp),
                f"ce_{tag}": lambda: EngineRun("ce", 2 * B, S, n, device, comp),
                f"paco_{tag}": lambda: EngineRun("paco", B, S, n, device, comp),
                f"gpaco_{tag}": lambda: EngineRun("gpaco", B, S, n, device, comp),
                f"vit_ce_{tag}": lambda: EngineRun("ce", VB, S, n, device, comp, False, arch=vit),
                f"vit_gpaco_{tag}": lambda: EngineRun("gpaco", VB // 2, S, n, device, comp, False, arch=vit)}
        built, mem = {}, {}
        for k, make in runs.items():  # build and warm up one at a time to get each one's peak memory
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            built[k] = make()
            built[k]()  # warm-up (and compilation)
            built[k]()
            if device.type == "cuda":
                mem[k] = torch.cuda.max_memory_allocated(device) / 2**30
        times = C.interleave(built, args.rounds, warmup=0)
        for k, r in built.items():
            results[k] = {"s": times[k], "images": r.images_per_step, "mem_gib": mem.get(k)}
        del built
    print(f"GPU bench on {name}: ResNet-50, C={NUM_CLASSES}, K={QUEUE}, bf16 autocast, channels_last, {S}px, "
          f"GPaCo B={B} per view, CE {2 * B}; {n} steps x {args.rounds} rounds; torch {torch.__version__}")
    print(f"{'config':22s} {'step ms':>9s} {'images/s':>10s} {'samples/s':>10s} {'peak GiB':>9s}")
    for k, r in results.items():
        t = C.median(r["s"])
        samples = r["images"] // 2 if k.startswith(("gpaco", "paco", "vit_gpaco")) else r["images"]
        mem = f"{r['mem_gib']:.2f}" if r["mem_gib"] is not None else "-"
        print(f"{k:22s} {1e3 * t:9.1f} {r['images'] / t:10.0f} {samples / t:10.0f} {mem:>9s}")
    rows = []
    for comp in modes:
        tag = "compiled" if comp else "eager"
        g, c, b = (results[f"{m}_{tag}"]["s"] for m in ("gpaco", "ce", "bare_ce"))
        rows.append(C.Row("gpu", f"GPU {tag}: GPaCo step (B={B}) / CE step (2B)", C.paired_ratio(g, c), 1.05, "<=",
                          name))
        rows.append(C.Row("gpu", f"GPU {tag}: our CE / bare CE (2B={2 * B})", C.paired_ratio(c, b), 1.03, "<=",
                          name))
        p_, c1 = results[f"paco_{tag}"]["s"], results[f"ce_{tag}"]["s"]
        rows.append(C.Row("gpu", f"GPU {tag}: PaCo step (B={B}) / CE step (2B)", C.paired_ratio(p_, c1), None, "<=",
                          name))
        vg, vc = results[f"vit_gpaco_{tag}"]["s"], results[f"vit_ce_{tag}"]["s"]
        rows.append(C.Row("gpu", f"GPU {tag}: {vit} GPaCo step (B={VB // 2}) / CE step ({VB})",
                          C.paired_ratio(vg, vc), None, "<=", name))
    if len(modes) == 2:
        for m in ("ce", "paco", "gpaco", "vit_ce", "vit_gpaco"):
            rows.append(C.Row("gpu", f"GPU {m}: compiled / eager step", C.paired_ratio(
                results[f"{m}_compiled"]["s"], results[f"{m}_eager"]["s"]), None, "<=", name))
    C.print_rows(rows)
    C.rows_to_json(rows, args.json, {"device": name, "results": {k: {**v, "s": v["s"]} for k, v in results.items()}})
    return C.exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
