"""Run every CPU benchmark and print one table of all ratios with their targets.

    python bench/run_all.py --quick            # ~6 minutes: smaller settings, fewer repeats
    python bench/run_all.py                    # the full run recorded in docs/benchmarks.md
    python bench/run_all.py --write-docs       # full run + rewrite the results section of
                                               # docs/benchmarks.md and docs/benchmarks_scale.png

Each benchmark runs as its own process (``bench/<name>.py --json``), one after the other,
so their memory and threads do not mix. Exit status: 0 when every target is met, 1 when
one is missed, 2 when a benchmark failed to run. GPU numbers come from ``bench/gpu.sh``
(not run here; CPU-only machines have nothing to measure).
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

BENCHES = ("pipeline_speed", "train_step", "eval_speed", "memory", "scale", "loss_speed", "kd_loss", "gendd_sampler")
DOC = os.path.join(C.ROOT, "docs", "benchmarks.md")
PLOT = os.path.join(C.ROOT, "docs", "benchmarks_scale.png")
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"


def loss_speed_rows(quick: bool, json_path: str) -> None:
    """bench/loss_speed.py's comparison (paco_loss against the dense-mask formula) with its own
    correctness check and estimator (ratio of medians), interleaved, one thread."""
    import loss_speed

    import torch

    C.set_threads(1)
    repeats = 15 if quick else 40
    rows = []
    for name, n, K, D, Cn in (("ImageNet-LT", 64, 8192, 128, 1000), ("iNaturalist", 64, 8192, 128, 8142)):
        loss_speed.bench(name, n, K, D, Cn, 1, "cpu")  # raises if the two disagree
        inputs = loss_speed.make_inputs(n, K, D, Cn, "cpu")

        def timer(fn):
            return lambda: loss_speed.time_once(fn, *inputs, n, "cpu")[0]

        t = C.interleave({"ours": timer(loss_speed.paco_loss), "dense": timer(loss_speed.dense_paco_loss)},
                         repeats, warmup=2)
        ratio = C.median(t["ours"]) / C.median(t["dense"])  # loss_speed.py's own estimator
        rows.append(C.Row("loss", f"paco_loss fwd+bwd / dense version, {name}", ratio, 1.0, "<=", f"{1e3 * C.median(t['ours']):.1f} vs {1e3 * C.median(t['dense']):.1f} ms "
                          f"(n={n}, K={K}, C={Cn}), {torch.get_num_threads()} thread"))
    C.print_rows(rows)
    C.rows_to_json(rows, json_path)


def run_bench(name: str, quick: bool, tmp: str, plot: str | None) -> tuple[list, dict, float, str | None]:
    out = os.path.join(tmp, f"{name}.json")
    t0 = time.time()
    if name == "loss_speed":
        cmd = [sys.executable, os.path.abspath(__file__), "--_loss-speed", out] + (["--quick"] if quick else [])
    else:
        cmd = [sys.executable, os.path.join(C.BENCH_DIR, f"{name}.py"), "--json", out] + (["--quick"] if quick else [])
        if name == "scale" and plot:
            cmd += ["--plot", plot]
    print(f"\n=== {name}: {' '.join(os.path.relpath(c, C.ROOT) if c.startswith(C.ROOT) else c for c in cmd[1:])}",
          flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, env=env, cwd=C.ROOT)
    wall = time.time() - t0
    if proc.returncode not in (0, 1) or not os.path.exists(out):
        return [], {}, wall, f"{name} exited with status {proc.returncode}"
    rows, extra = C.rows_from_json(out)
    return rows, extra, wall, None


def markdown(rows, machine, loads, walls, quick, errors) -> str:
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    other = [v["other_cores"] for v in loads.values() if v and v.get("other_cores") is not None]
    lines = [
        f"Run {when} (`python bench/run_all.py{' --quick' if quick else ''}`), {sum(walls.values()):.0f} s in all.",
        "",
        f"* Machine: {C.describe(machine)}.",
        f"* Load: other processes used {min(other, default=0):.2f}-{max(other, default=0):.2f} of the "
        f"{machine['nproc']} cores while the benchmarks ran (from /proc/stat); load average "
        f"{machine['loadavg'][0]:.2f} at the start.",
        "",
        "| group | measure | ratio | target | status | detail |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        status = {"met": "met", "MISSED": "**MISSED**", "info": "info"}[r.status()]
        lines.append(f"| {r.group} | {r.name} | {r.value:.3f} | {r.target_text()} | {status} | {r.detail} |")
    lines.append("")
    lines.append("Per benchmark: " + ", ".join(
        f"{k} {walls[k]:.0f} s (others {loads[k]['other_cores'] or 0:.2f} cores)" for k in walls if loads.get(k)) + ".")
    if errors:
        lines += ["", "Failed: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


def write_docs(section: str) -> None:
    with open(DOC) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} lacks the {BEGIN} ... {END} markers")
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{section}{END}", text, flags=re.S)
    with open(DOC, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(DOC, C.ROOT)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller settings and fewer repeats (~6 minutes)")
    p.add_argument("--only", nargs="+", choices=BENCHES, default=None, help="run only these benchmarks")
    p.add_argument("--write-docs", action="store_true",
                   help="rewrite the results section of docs/benchmarks.md (and the scale plot)")
    p.add_argument("--json", default=None, help="also write every row here")
    p.add_argument("--_loss-speed", dest="loss_speed_json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.loss_speed_json:
        loss_speed_rows(args.quick, args.loss_speed_json)
        return 0
    machine = C.machine()
    print(f"machine: {C.describe(machine)}; load average {machine['loadavg'][0]:.2f}")
    rows, loads, walls, errors = [], {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or BENCHES:
            plot = PLOT if (args.write_docs and name == "scale") else None
            r, extra, wall, err = run_bench(name, args.quick, tmp, plot)
            rows += r
            loads[name] = extra.get("load")
            walls[name] = wall
            if err:
                errors.append(err)
    print("\n=== all benchmarks" + (" (quick)" if args.quick else "") + f", {sum(walls.values()):.0f} s in all")
    C.print_rows(rows)
    missed = [r.name for r in rows if r.met is False]
    print(f"{sum(r.met is True for r in rows)} targets met, {len(missed)} missed"
          + (f": {'; '.join(missed)}" if missed else "") + (f"; failed: {'; '.join(errors)}" if errors else ""))
    if args.json:
        C.rows_to_json(rows, args.json, {"machine": machine, "loads": loads, "walls": walls, "errors": errors})
    if args.write_docs:
        write_docs(markdown(rows, machine, loads, walls, args.quick, errors))
    return 2 if errors else C.exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
