"""Scale: how GPaCo's step time and memory grow with the queue size K and the class count C.

K: 1k .. 64k at C=1000; C: 100 .. 8142 (iNaturalist) at K=8192; B=8 per view.

* Time. What K and C change is the part of the step after the backbone: the projection
  MLP, the classifier (C x 2048), the queue snapshot/enqueue (K x 128), the loss
  (anchors x (K + C)) and the optimizer step over the head's parameters. That part is
  timed exactly, with the real engine (``build_model('gpaco', <identity backbone>)`` +
  ``Criterion`` + ``gpaco.engine.step.train_epoch`` on pooled-feature inputs), interleaved with the
  reference point K=8192, C=1000. It is reported in ms and as a share of a full ResNet-50
  GPaCo step (measured here at ``--ref-image-size``, default 224 px), which is how much
  the step grows with K and C. (Timing whole ResNet-50 steps per point instead would
  bury differences of a few ms under the machine's noise.)
* Memory. Peak RSS of a short real ResNet-50 GPaCo training run per point, each in a
  fresh process (``bench/memory.py --child``, at ``--image-size``).

    python bench/scale.py [--quick] [--plot docs/benchmarks_scale.png]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402
import memory  # noqa: E402
import train_step as TS  # noqa: E402

from gpaco.methods import build_criterion  # noqa: E402
from gpaco.engine.step import FitContext, train_epoch  # noqa: E402
from gpaco.methods import get_method  # noqa: E402
from gpaco.methods.rebuild import build_model  # noqa: E402

K_FULL = (1024, 4096, 8192, 16384, 32768, 65536)
C_FULL = (100, 1000, 4000, 8142)
K_QUICK = (1024, 8192, 65536)
C_QUICK = (100, 1000, 8142)
FEAT = 2048


class Head:
    """GPaCo without the backbone: inputs are pooled features [B, 2048] per view."""

    def __init__(self, batch, classes, queue, steps=4):
        torch.manual_seed(0)
        self.model = build_model("gpaco", torch.nn.Identity(), classes, feat_dim=FEAT, queue_size=queue,
                                 global_batch=batch)
        self.criterion = build_criterion("gpaco", class_counts=TS.long_tail_counts(classes))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(0)
        self.data = [([torch.randn(batch, FEAT, generator=g) for _ in range(2)],
                      torch.randint(0, classes, (batch,), generator=g)) for _ in range(steps)]

    def __call__(self):
        t0 = time.perf_counter()
        train_epoch(FitContext(model=self.model, criterion=self.criterion, optimizer=self.opt,
                               method=get_method("gpaco"), device=torch.device("cpu")), self.data, epoch=0)
        return (time.perf_counter() - t0) / len(self.data)


def peak_rss(batch, size, classes, queue):
    cmd = [sys.executable, os.path.join(C.BENCH_DIR, "memory.py"), "--child", "gpaco:B", "--batch", str(batch),
           "--image-size", str(size), "--classes", str(classes), "--queue", str(queue)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=memory.child_env()).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64, help="image size of the memory runs")
    p.add_argument("--ref-image-size", type=int, default=None,
                   help="image size of the reference ResNet-50 GPaCo step (default 224; quick: 112)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds per point (default 7, quick 4)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
    p.add_argument("--plot", default=None, help="write the figure here (PNG)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    repeats = args.repeats or (4 if args.quick else 7)
    ref_size = args.ref_image_size or (112 if args.quick else 224)
    Ks, Cs = (K_QUICK, C_QUICK) if args.quick else (K_FULL, C_FULL)
    B = args.batch
    C.set_threads(1)
    load = C.LoadMeter()

    # the full step the head's cost is compared with
    full = TS.Engine("gpaco", B, ref_size, 1000, 8192, 1)
    full_ms = 1e3 * C.median(C.interleave({"s": full}, 2 if args.quick else 3, warmup=1)["s"])
    del full

    ref = Head(B, 1000, 8192)
    points = [("K", k, 1000) for k in Ks] + [("C", 8192, c) for c in Cs]
    results = {}
    for axis, K, Cn in points:
        key = (K, Cn)
        if key not in results:
            h = ref if key == (8192, 1000) else Head(B, Cn, K)
            t = C.interleave({"h": h, "ref": ref}, repeats, warmup=1)
            mem = None if args.no_memory else peak_rss(B, args.image_size, Cn, K)
            results[key] = {"K": K, "C": Cn, "head_ms": 1e3 * C.median(t["h"]),
                            "vs_ref": C.paired_ratio(t["h"], t["ref"]), "peak_mib": mem}
        r = results[key]
        print(f"  {axis}: K={K:6d} C={Cn:5d}  head {r['head_ms']:6.1f} ms ({r['vs_ref']:.2f}x K=8192,C=1000) "
              f"= {r['head_ms'] / full_ms:6.1%} of the ResNet-50 step; peak {r['peak_mib'] or 0:.0f} MiB", flush=True)
    info = load.stop()
    ref_ms = results[(8192, 1000)]["head_ms"]
    for r in results.values():
        # the whole step at this point relative to the step at the reference point
        r["step_growth"] = (full_ms - ref_ms + r["head_ms"]) / full_ms
    k_lo, k_hi, c_lo, c_hi = results[(Ks[0], 1000)], results[(Ks[-1], 1000)], results[(8192, Cs[0])], \
        results[(8192, Cs[-1])]

    def mem_txt(a, b):
        return "" if a["peak_mib"] is None else f"; peak RSS {a['peak_mib']:.0f} -> {b['peak_mib']:.0f} MiB"

    rows = [
        C.Row("scale", f"step(K={Ks[-1] // 1024}k) / step(K={Ks[0] // 1024}k), C=1000",
              k_hi["step_growth"] / k_lo["step_growth"], None, "<=",
              f"head {k_lo['head_ms']:.1f} -> {k_hi['head_ms']:.1f} ms of a {full_ms:.0f} ms step" + mem_txt(k_lo, k_hi)),
        C.Row("scale", f"step(C={Cs[-1]}) / step(C={Cs[0]}), K=8192",
              c_hi["step_growth"] / c_lo["step_growth"], None, "<=",
              f"head {c_lo['head_ms']:.1f} -> {c_hi['head_ms']:.1f} ms of a {full_ms:.0f} ms step" + mem_txt(c_lo, c_hi)),
    ]
    print(f"scale: GPaCo, B={B} per view, 1 thread; reference ResNet-50 GPaCo step {full_ms:.0f} ms at {ref_size}px; "
          f"memory runs at {args.image_size}px; {repeats} rounds per point; other processes used "
          f"{info['other_cores'] or 0:.2f} cores meanwhile")
    C.print_rows(rows)
    pts = list(results.values())
    if args.plot:
        plot(pts, Ks, Cs, args.plot, B, ref_size, full_ms, args.image_size)
        print(f"wrote {args.plot}")
    C.rows_to_json(rows, args.json, {"load": info, "points": pts, "full_step_ms": full_ms, "ref_image_size": ref_size})
    return C.exit_code(rows)


def plot(points, Ks, Cs, path, B, ref_size, full_ms, mem_size):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(p["K"], p["C"]): p for p in points}
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), dpi=110)
    for ax, xs, sel, label in ((axes[0], Ks, lambda x: by[(x, 1000)], "queue size K (C = 1000)"),
                               (axes[1], Cs, lambda x: by[(8192, x)], "classes C (K = 8192)")):
        ps = [sel(x) for x in xs]
        ax.plot(xs, [100 * p["head_ms"] / full_ms for p in ps], "o-", color="#c0392b")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("head after the backbone, % of step", color="#c0392b")
        ax.set_ylim(0, max(5.0, 1.15 * max(100 * p["head_ms"] / full_ms for p in ps)))
        ax.grid(alpha=0.3)
        if ps[0]["peak_mib"] is not None:
            ax2 = ax.twinx()
            ax2.plot(xs, [p["peak_mib"] / 1024 for p in ps], "s--", color="#2c3e50")
            ax2.set_ylabel(f"peak RSS, GiB ({mem_size}px run)", color="#2c3e50")
            lo = min(p["peak_mib"] for p in ps) / 1024
            hi = max(p["peak_mib"] for p in ps) / 1024
            ax2.set_ylim(lo - 0.05 - 0.5 * (hi - lo), hi + 0.05 + 0.5 * (hi - lo))
    fig.suptitle(f"GPaCo on CPU, B={B}/view. Red: projection + classifier + queue + loss + their optimizer "
                 f"update, as % of a {full_ms / 1e3:.1f} s\nResNet-50 step at {ref_size}px. Blue: peak RSS of a "
                 f"ResNet-50 GPaCo training run at {mem_size}px", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
