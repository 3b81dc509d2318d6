"""Peak resident memory of CPU training runs, gpaco against the bare loop.

Each configuration runs in a fresh Python process (so peaks do not mix; ``child_env``
fixes glibc's allocator threshold so that peaks repeat to the MiB): the same
configurations as ``bench/train_step.py`` (real ``build_model`` + ``Criterion`` +
``train_epoch``; the bare loop is timm resnet50 + F.cross_entropy + SGD), a few steps,
then the process reports ``ru_maxrss``. Ratios are of the peak RSS; the footprint after
imports (interpreter + libraries, before any model exists) is reported beside it.
GPU peak memory is measured by ``bench/gpu_speed.py`` where a GPU is present.

    python bench/memory.py [--quick] [--batch 8] [--image-size 112]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

TARGET_CE = 1.05  # our CE recipe holds nothing the bare loop does not (our own target)


def child(config: str, batch: int, size: int, classes: int, queue: int, steps: int) -> None:
    import torch

    C.set_threads(1)
    method, b = config.split(":")
    b = {"B": batch, "2B": 2 * batch}[b]
    if method == "bare":
        import timm  # noqa: F401  (all the bare loop needs: torch + timm)

        base = C.peak_rss_mib()
        runner = C.Bare(b, size, classes, steps, channels_last=True)  # the engine's memory order on the CPU
    else:
        import timm  # noqa: F401  (gpaco imports it when it builds the backbone)
        import train_step as TS  # imports gpaco, as tools/train.py does

        base = C.peak_rss_mib()
        runner = TS.Engine(method, b, size, classes, queue, steps)
    runner()
    runner()
    del runner
    torch.set_num_threads(1)
    print(json.dumps({"config": config, "after_import_mib": base, "peak_mib": C.peak_rss_mib()}))


def child_env() -> dict:
    """One thread; and glibc's mmap threshold fixed at 64 KiB, so every tensor buffer is
    mmap'd and returned on free: the peak then measures live memory and repeats to the
    MiB (the default threshold adapts at run time and leaves 0-150 MiB of cached heap in
    the peak, differently from run to run)."""
    return dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536")


def run_child(config, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config, "--batch", str(args.batch),
           "--image-size", str(args.image_size), "--classes", str(args.classes), "--queue", str(args.queue),
           "--steps", "2"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=child_env()).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=None, help="default 112 (quick: 96)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--queue", type=int, default=8192)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.image_size = args.image_size or (96 if args.quick else 112)
    if args.child:
        child(args.child, args.batch, args.image_size, args.classes, args.queue, args.steps)
        return 0
    load = C.LoadMeter()
    res = {c: run_child(c, args) for c in ("bare:B", "ce:B", "paco:B", "gpaco:B", "bare:2B")}
    peak = {c: r["peak_mib"] for c, r in res.items()}
    imp = {c: r["after_import_mib"] for c, r in res.items()}
    B = args.batch

    def row(name, a, b, target=None):
        return C.Row("memory", name, peak[a] / peak[b], target, "<=",
                     f"{peak[a]:.0f} vs {peak[b]:.0f} MiB peak RSS (after imports {imp[a]:.0f} vs {imp[b]:.0f})")

    rows = [
        row(f"peak RSS: our CE recipe / bare loop (B={B})", "ce:B", "bare:B", TARGET_CE),
        row(f"peak RSS: PaCo / bare loop (B={B})", "paco:B", "bare:B"),
        row(f"peak RSS: GPaCo (B={B}) / bare loop (2B={2 * B})", "gpaco:B", "bare:2B"),
    ]
    info = load.stop()
    print(f"memory: ResNet-50, B={B}, {args.image_size}px, K={args.queue}, C={args.classes}, CPU, one process per "
          f"configuration")
    C.print_rows(rows)
    C.rows_to_json(rows, args.json, {"load": info, "peak_mib": peak, "after_import_mib": imp})
    return C.exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
