"""GPU throughput: ResNet-50 CE, PaCo and GPaCo in bf16 with channels_last, eager and compiled.

Synthetic data already on the device (so the input pipeline is out of the picture), the
real engine pieces (``build_model`` + ``Criterion`` + ``gpaco.engine.step.train_epoch`` with
``amp='bf16'``, ``channels_last=True``; ``torch.compile(model)`` as ``tools/train.py
--compile`` does), and a bare loop (timm resnet50 + F.cross_entropy + SGD under the same
autocast/channels_last) as the baseline of the CE recipe. Configurations run interleaved;
each figure is the median over rounds of ``--steps`` steps.

Also the ViT-B/16 fine-tuning step (MAE recipe: AdamW with layer decay, in the memory format
``tools/train.py`` picks on the device),
GPaCo at B/2 per view against CE at B; the DeepLabV3+ R50 and UPerNet Swin-T training
iteration (pixel GPaCo as ``tools/train_seg.py`` builds it, bf16 autocast, the ADE20K recipes'
512x512 crop and 2 images per GPU; a compile failure is printed in its row); and end to end, a
real two-view GPaCo training (``tools/train.py``, a child process) on a generated JPEG folder
with ``--gpu-aug`` off and on, images/s of its second epoch from its log.

Prints images/s (and samples/s: a GPaCo sample is two images), the ratios
GPaCo(B) / CE(2B) step time (same images per step), our CE / bare CE, compiled / eager,
and the peak GPU memory of each configuration. Each row is printed (and flushed) as soon as it
is measured and the whole table again at the end; a step that raises prints its error in its row
and the run goes on, and a row whose optional package (the ``bench`` extra) is missing says so.
Run through ``bench/gpu.sh``.

    python bench/gpu_speed.py [--batch 128] [--steps 20] [--rounds 3] [--no-compile] [--e2e-steps 50]
    python bench/gpu_speed.py --device cpu --tiny   # smoke test of the script itself
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from gpaco.methods import build_criterion  # noqa: E402
from gpaco.engine.precision import resolve_channels_last, use_cudnn_benchmark  # noqa: E402
from gpaco.engine.step import Batch, FitContext, train_epoch  # noqa: E402
from gpaco.methods import get_method as _get_method  # noqa: E402
from gpaco.engine.optim import build_optimizer  # noqa: E402
from gpaco.engine.args import cpu_count  # noqa: E402
from gpaco.engine.logging import SUMMARY_NAME, read_summary  # noqa: E402
from gpaco.methods import get_method, method_options  # noqa: E402
from gpaco.methods.rebuild import build_model  # noqa: E402
from gpaco.segmentation import train as seg_train  # noqa: E402
from gpaco.segmentation.inference import collate  # noqa: E402

NUM_CLASSES, QUEUE = 1000, 8192

# Packages outside pyproject's dependencies, imported only by the rows that need them: module ->
# pip name (pyproject's `bench` extra declares them). A missing one skips those rows.
OPTIONAL = {"skimage": "scikit-image"}


def missing_package(module: str):
    """None when ``module`` imports, else the skipped row's text."""
    try:
        importlib.import_module(module)
        return None
    except ImportError:
        return f"skipped: {module} not installed (pip install {OPTIONAL[module]}, or .[bench])"


def error_text(e: BaseException, what: str = "failed") -> str:
    why = " ".join(line.strip() for line in str(e).splitlines()[:3] if line.strip())
    return f"{what}: {type(e).__name__}: {why[:200]}"


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
        self.ctx = FitContext(model=self.model, criterion=self.criterion, optimizer=self.opt,
                              method=_get_method(method), device=device, amp=amp, channels_last=channels_last)
        self.images_per_step = batch * (2 if method in ("paco", "gpaco") else 1)

    def __call__(self):
        sync(self.device)
        t0 = time.perf_counter()
        train_epoch(self.ctx, self.data, epoch=0)
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


# Segmentation: the recipes' flags (sh/GPaCo/Seg/; pixel GPaCo) on ADE20K's 150 classes. The project
# has no DeepLabV3+ ADE20K recipe: its R50 runs SGD as the Cityscapes recipe, Swin-T AdamW as ADE20K's.
SEG_RECIPES = {
    "seg_deeplabv3plus_r50": ["--arch", "r50", "--optimizer", "sgd", "--lr", "0.01", "--wd", "5e-4"],
    "seg_upernet_swin_t": ["--arch", "swin_t", "--optimizer", "adamw", "--lr", "6e-5", "--wd", "0.01"],
}


class SegRun:
    """One segmentation training iteration as tools/train_seg.py runs it: the method's model and
    criterion, the flags' optimizer, the method's ``training_step`` under bf16 autocast, backward, step; one
    batch of the --dry-run's synthetic images through the training transform, on the device."""

    def __init__(self, recipe, batch, crop, steps, device, compile_):
        torch.manual_seed(0)
        self.device, self.steps = device, steps
        args = seg_train.parse_train_args(["--dataset", "ade20k", "--method", "gpaco", "--crop-size", str(crop),
                                           str(crop), "--img-scale", str(4 * crop), str(crop), "--amp", "bf16",
                                           *SEG_RECIPES[recipe]])
        self.method = get_method(args.method, seg_train.TASK)
        model_kw, loss_kw = method_options(self.method, vars(args))
        num_classes = 150
        model = self.method.build_model(args.arch, num_classes, encoder=args.encoder, **model_kw).to(device).train()
        self.criterion = self.method.build_criterion(num_classes=num_classes, **loss_kw).to(device)
        self.opt = seg_train.optimizer_of(model, args)
        self.amp = args.amp
        self.model = torch.compile(model) if compile_ else model
        train_set = seg_train.train_datasets(args, synthetic=True)[0]
        imgs, labels, _ = collate([train_set[i % len(train_set)] for i in range(batch)])
        self.imgs, self.labels = imgs.to(device), labels.to(device)
        self.images_per_step = batch
        self.ctx = FitContext(model=self.model, criterion=self.criterion, optimizer=self.opt, method=self.method,
                              device=device, amp=self.amp)

    def __call__(self):
        sync(self.device)
        t0 = time.perf_counter()
        for it in range(self.steps):
            self.ctx.generator = torch.Generator(device=self.device).manual_seed(it)
            loss = self.method.training_step(self.ctx, Batch(self.imgs, self.labels)).loss
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        sync(self.device)
        return (time.perf_counter() - t0) / self.steps


E2E_AUG = "randcls_sim"  # a two-view strategy --gpu-aug supports (the R50 GPaCo recipe's randcls_randclsstack has none)


def e2e_env(device):
    """The environment of a tools/train.py child that trains on ``device`` (it takes the first visible GPU)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif device.index is not None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        env["CUDA_VISIBLE_DEVICES"] = ids[device.index]
    return env


def e2e_run(root, list_path, gpu_aug, *, device, batch, size, num_classes, workers, arch="resnet50"):
    """A real two-view GPaCo training (tools/train.py, a child process) of 2 epochs over the
    split list; images/s of the second epoch from its summary.csv (the loop's
    ``train_images_per_s``: the epoch's wall time, data loading and the start of its loader
    workers included; process start-up, model build and the first epoch excluded)."""
    out = os.path.join(root, f"run_gpuaug_{'on' if gpu_aug else 'off'}")
    cmd = [sys.executable, os.path.join(C.ROOT, "tools", "train.py"), "--method", "gpaco", "--arch", arch,
           "--dataset", "split", "--data-root", root, "--train-list", list_path, "--num-classes", str(num_classes),
           "--image-size", str(size), "--aug", E2E_AUG, "--batch-size", str(batch),
           "--queue-size", str(QUEUE - QUEUE % batch),
           "--epochs", "2", "--warmup-epochs", "0", "--amp", "bf16", "--channels-last", "--workers", str(workers),
           "--print-freq", "0", "--output-dir", out, *(["--gpu-aug"] if gpu_aug else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=C.ROOT, env=e2e_env(device), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rows = read_summary(os.path.join(out, SUMMARY_NAME))
    if proc.returncode != 0 or len(rows) < 2:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        return {"error": f"tools/train.py exit {proc.returncode}: {lines[-1][:200]}"}
    samples_s = float(rows[-1]["train_images_per_s"])  # the loop counts samples (labels), not views
    return {"s": [batch / samples_s], "images": 2 * batch, "mem_gib": None, "wall_s": wall}


def run_e2e(device, *, batch, size, steps, n_photos, photo_size, report):
    """--gpu-aug off and on over one generated JPEG folder (bench/_common.make_photos, listed
    cyclically to ``steps`` global batches per epoch), in the ImageNet-LT split format; each
    result (or ``{"error": text}``) goes to ``report(key, result)`` as soon as it is known."""
    keys = [f"e2e_gpaco_gpuaug_{'on' if gpu_aug else 'off'}" for gpu_aug in (False, True)]
    skipped = missing_package("skimage")  # make_photos cuts its photographs from skimage.data
    if skipped:
        for k in keys:
            report(k, {"error": skipped})
        return
    n = batch * steps
    num_classes = min(1000, n)
    with tempfile.TemporaryDirectory(prefix="gpaco_gpu_bench_") as tmp:
        try:
            photos = C.make_photos(os.path.join(tmp, "train"), n=n_photos, size=photo_size)
            list_path = os.path.join(tmp, "train.txt")
            C.write_split([photos[i % len(photos)] for i in range(n)], tmp, list_path, num_classes)
        except Exception as e:  # noqa: BLE001 -- the rows say why; the compiled rows still come
            for k in keys:
                report(k, {"error": error_text(e, "photos failed")})
            return
        for k, gpu_aug in zip(keys, (False, True)):
            try:
                r = e2e_run(tmp, list_path, gpu_aug, device=device, batch=batch, size=size,
                            num_classes=num_classes, workers=e2e_workers())
            except Exception as e:  # noqa: BLE001
                r = {"error": error_text(e)}
            report(k, r)


def e2e_workers() -> int:
    return max(1, cpu_count() - 1)  # one core left to the training process itself


def e2e_note(args, B, photos, photo_size) -> str:
    """The table header's note on the end-to-end runs."""
    return (f"; e2e: tools/train.py GPaCo R50 --aug {E2E_AUG}, bf16, channels_last, eager, batch {B}, "
            f"{e2e_workers()} workers, {args.e2e_steps} steps x 2 epochs on {photos} JPEGs {photo_size[0]}x"
            f"{photo_size[1]}, epoch 2 from its log")


class Table:
    """The results table. Each row is printed and flushed the moment it is known (a run cut short, by
    a crash or a lost machine, keeps what it measured); ``print_all`` prints the whole table again."""

    def __init__(self, names, header):
        self.w = max(len(k) for k in [*names, "config"])
        self.header = header
        self.results, self.failed = {}, {}

    def print_header(self):
        print(*self.header, sep="\n")
        print(f"{'config':{self.w}s} {'step ms':>9s} {'it/s':>8s} {'images/s':>10s} {'samples/s':>10s} "
              f"{'peak GiB':>9s}", flush=True)

    def add(self, k, r):
        """``r``: a result, or ``{"error": text}``."""
        if "error" in r:
            self.failed[k] = r["error"]
        else:
            self.results[k] = r
        print(self.line(k), flush=True)

    def fail(self, k, text):
        self.add(k, {"error": text})

    def line(self, k) -> str:
        if k in self.failed:
            return f"{k:{self.w}s} {self.failed[k]}"
        r = self.results[k]
        t = C.median(r["s"])
        two_views = k.startswith(("gpaco", "paco", "vit_gpaco", "e2e_gpaco"))
        samples = r["images"] // 2 if two_views else r["images"]
        mem = f"{r['mem_gib']:.2f}" if r["mem_gib"] is not None else "-"
        return f"{k:{self.w}s} {1e3 * t:9.1f} {1 / t:8.2f} {r['images'] / t:10.0f} {samples / t:10.0f} {mem:>9s}"

    def print_all(self):
        print()
        self.print_header()
        for k in [*self.results, *self.failed]:
            print(self.line(k))
        sys.stdout.flush()


def interleave(built, rounds, done, fail):
    """``C.interleave`` (same order every round, no extra warm-up) with each configuration guarded:
    one that raises is dropped with ``fail(key, text)``; ``done(key, times)`` as soon as a
    configuration's last round is timed."""
    times = {k: [] for k in built}
    for i in range(rounds):
        for k in list(built):
            try:
                times[k].append(built[k]())
            except Exception as e:  # noqa: BLE001 -- e.g. out of memory mid-run: say so, go on
                del built[k], times[k]
                fail(k, error_text(e))
                continue
            if i == rounds - 1:
                done(k, times[k])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=128, help="B: GPaCo per-view batch; CE runs at 2B")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20, help="steps per timed unit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--seg-batch", type=int, default=2, help="segmentation images per step (the ADE20K recipes: "
                   "global batch 16 on 8 GPUs)")
    p.add_argument("--seg-crop", type=int, default=512, help="segmentation crop (the ADE20K recipes: 512x512)")
    p.add_argument("--e2e-steps", type=int, default=50, help="steps per epoch of the end-to-end runs (2 epochs, "
                   "the second timed)")
    p.add_argument("--no-e2e", action="store_true", help="leave out the end-to-end training runs")
    p.add_argument("--budget-min", type=float, default=6.0,
                   help="wall-clock budget in minutes (default 6, so that the run stays under 8): the eager rows "
                        "and the end-to-end runs come first, then each compiled configuration starts only while "
                        "the budget lasts (a skipped one says so in its row); 0: no budget")
    p.add_argument("--tiny", action="store_true", help="batch 2, 32px, 1 step, 1 round, 64px segmentation crops, "
                   "1-step epochs on 4 small JPEGs (smoke test)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    photos, photo_size = 64, (500, 375)  # ~ImageNet's resolution, listed cyclically
    if args.tiny:
        args.batch, args.image_size, args.steps, args.rounds = 2, 32, 1, 1
        args.seg_batch, args.seg_crop, args.e2e_steps, photos, photo_size = 2, 64, 1, 4, (64, 48)
    device = torch.device(args.device)
    if args.tiny and device.type == "cpu":
        C.set_threads(1)  # a smoke test: one thread (the children too) stays quick on a loaded machine
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device: nothing measured (bench/gpu.sh needs a GPU)")
            return 2
        # exactly tools/train.py's rule (no TF32: the training tools do not turn it on)
        torch.backends.cudnn.benchmark = use_cudnn_benchmark(device, deterministic=False)
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({C.cpu_model()})"
    B, S, n = args.batch, args.image_size, args.steps
    # ViT-B/16 fine-tuning (tiny: the 2-block test ViT): CE at VB images, GPaCo at VB/2 per view, in the
    # memory format tools/train.py picks for this device and bf16 (its --channels-last default)
    vit, VB = ("mae_vit_tiny_d2_patch8", 2 * B) if args.tiny else ("mae_vit_base_patch16", B)
    vit_cl = resolve_channels_last(None, device, "bf16")
    SB, SC = args.seg_batch, args.seg_crop
    modes = [False] if args.no_compile else [False, True]
    started = time.time()

    def over_budget() -> bool:
        return args.budget_min > 0 and time.time() - started > 60 * args.budget_min

    def configs(comp):
        runs = {"bare_ce": lambda: BareRun(2 * B, S, n, device, comp),
                "ce": lambda: EngineRun("ce", 2 * B, S, n, device, comp),
                "paco": lambda: EngineRun("paco", B, S, n, device, comp),
                "gpaco": lambda: EngineRun("gpaco", B, S, n, device, comp),
                "vit_ce": lambda: EngineRun("ce", VB, S, n, device, comp, vit_cl, arch=vit),
                "vit_gpaco": lambda: EngineRun("gpaco", VB // 2, S, n, device, comp, vit_cl, arch=vit)}
        for recipe in SEG_RECIPES:
            runs[recipe] = lambda recipe=recipe: SegRun(recipe, SB, SC, n, device, comp)
        tag = "compiled" if comp else "eager"
        return {f"{k}_{tag}": make for k, make in runs.items()}

    e2e_keys = [] if args.no_e2e else ["e2e_gpaco_gpuaug_off", "e2e_gpaco_gpuaug_on"]
    table = Table([k for comp in modes for k in configs(comp)] + e2e_keys, [
        f"GPU bench on {name}: ResNet-50, C={NUM_CLASSES}, K={QUEUE}, bf16 autocast, channels_last, {S}px, "
        f"GPaCo B={B} per view, CE {2 * B}; ViT {'channels_last' if vit_cl else 'NCHW'}; {n} steps x "
        f"{args.rounds} rounds; torch {torch.__version__}",
        f"segmentation: pixel GPaCo, ADE20K's 150 classes, {SB} images of {SC}x{SC} per step, bf16 autocast"
        f"{'' if args.no_e2e else e2e_note(args, B, photos, photo_size)}"])
    table.print_header()
    results, failed = table.results, table.failed

    for comp in modes:
        built, mem = {}, {}
        for k, make in configs(comp).items():  # build and warm up one at a time to get each one's peak memory
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            if comp and over_budget():
                table.fail(k, f"skipped: past the --budget-min {args.budget_min:g} budget")
                continue
            try:
                built[k] = make()
                built[k]()  # warm-up (and compilation)
                built[k]()
            except Exception as e:  # noqa: BLE001 -- e.g. a network torch.compile cannot take: say why, go on
                built.pop(k, None)
                table.fail(k, error_text(e, "compile failed" if comp else "failed"))
                continue
            if device.type == "cuda":
                mem[k] = torch.cuda.max_memory_allocated(device) / 2**30
        interleave(built, args.rounds,
                   lambda k, s: table.add(k, {"s": s, "images": built[k].images_per_step, "mem_gib": mem.get(k)}),
                   table.fail)
        built.clear()  # free the models before the next step
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the training children (or the next configurations) get the card
        if not comp and not args.no_e2e:  # the end-to-end runs before the compiled ones (see --budget-min)
            try:
                run_e2e(device, batch=B, size=S, steps=args.e2e_steps, n_photos=photos, photo_size=photo_size,
                        report=table.add)
            except Exception as e:  # noqa: BLE001 -- e.g. the temporary folder: the rows not yet printed say why
                for k in e2e_keys:
                    if k not in results and k not in failed:
                        table.fail(k, error_text(e))
    table.print_all()
    rows = []
    for comp in modes:
        tag = "compiled" if comp else "eager"
        # (numerator, denominator, label, target); a pair with a skipped or failed side is left out
        for a, b, label, target in [
                ("gpaco", "ce", f"GPaCo step (B={B}) / CE step (2B)", 1.05),
                ("ce", "bare_ce", f"our CE / bare CE (2B={2 * B})", 1.03),
                ("paco", "ce", f"PaCo step (B={B}) / CE step (2B)", None),
                ("vit_gpaco", "vit_ce", f"{vit} GPaCo step (B={VB // 2}) / CE step ({VB})", None)]:
            if f"{a}_{tag}" in results and f"{b}_{tag}" in results:
                rows.append(C.Row("gpu", f"GPU {tag}: {label}", C.paired_ratio(
                    results[f"{a}_{tag}"]["s"], results[f"{b}_{tag}"]["s"]), target, "<=", name))
    if len(modes) == 2:
        for m in ("ce", "paco", "gpaco", "vit_ce", "vit_gpaco", *SEG_RECIPES):
            if f"{m}_compiled" in results and f"{m}_eager" in results:
                rows.append(C.Row("gpu", f"GPU {m}: compiled / eager step", C.paired_ratio(
                    results[f"{m}_compiled"]["s"], results[f"{m}_eager"]["s"]), None, "<=", name))
    on, off = results.get("e2e_gpaco_gpuaug_on"), results.get("e2e_gpaco_gpuaug_off")
    if on and off:
        rows.append(C.Row("gpu", "GPU end-to-end: images/s --gpu-aug on / off", C.median(off["s"]) / C.median(on["s"]),
                          None, ">=", name))
    C.print_rows(rows)
    C.rows_to_json(rows, args.json, {"device": name, "results": results, "failed": failed})
    return C.exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
