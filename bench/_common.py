"""Shared helpers of the bench/ scripts: interleaved timing, result rows, machine description,
test photographs, and the plain baselines the ratios are taken against.

Every ratio is ``ours / baseline`` (or ``baseline / ours`` for throughputs, so that a
ratio is always "how much more it costs" or "how much faster", as the row says) with
both sides run in the same process, interleaved, so drift on a noisy machine hits both
alike; each side's figure is the median over the repeats.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)


# --------------------------------------------------------------------------- result rows

@dataclasses.dataclass
class Row:
    """One measured ratio. ``op`` is '<=' or '>=' (how ``value`` must compare to ``target``);
    ``target`` None marks a row reported for information only."""

    group: str
    name: str
    value: float
    target: Optional[float] = None
    op: str = "<="
    detail: str = ""

    @property
    def met(self) -> Optional[bool]:
        if self.target is None:
            return None
        return self.value <= self.target if self.op == "<=" else self.value >= self.target

    def status(self) -> str:
        return {None: "info", True: "met", False: "MISSED"}[self.met]

    def target_text(self) -> str:
        return "-" if self.target is None else f"{self.op} {self.target:g}"


def print_rows(rows: Sequence[Row], file=None) -> None:
    file = file or sys.stdout
    w = max([len(r.name) for r in rows] + [10])
    print(f"{'measure':{w}s} {'ratio':>8s} {'target':>8s} {'status':>7s}  detail", file=file)
    for r in rows:
        print(f"{r.name:{w}s} {r.value:8.3f} {r.target_text():>8s} {r.status():>7s}  {r.detail}", file=file)


def rows_to_json(rows: Sequence[Row], path: Optional[str], extra: Optional[dict] = None) -> None:
    if not path:
        return
    data = {"rows": [dataclasses.asdict(r) for r in rows], **(extra or {})}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def rows_from_json(path: str) -> tuple[List[Row], dict]:
    with open(path) as f:
        data = json.load(f)
    rows = [Row(**r) for r in data.pop("rows")]
    return rows, data


def exit_code(rows: Sequence[Row]) -> int:
    return 1 if any(r.met is False for r in rows) else 0


# --------------------------------------------------------------------------- timing

def interleave(fns: Dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> Dict[str, List[float]]:
    """Call every ``fn`` (which returns the seconds of one unit of work) ``warmup`` times,
    then ``repeats`` rounds of one call each, in the same order every round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(fn())
    return times


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def spread(xs: Sequence[float]) -> float:
    """Relative interquartile range, a noise indicator printed beside medians."""
    xs = sorted(xs)
    if len(xs) < 4:
        return (xs[-1] - xs[0]) / max(statistics.median(xs), 1e-12)
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / max(statistics.median(xs), 1e-12)


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of the per-round ratios: robust when the machine's speed drifts between rounds."""
    return statistics.median([a / b for a, b in zip(num, den)])


# --------------------------------------------------------------------------- machine

class LoadMeter:
    """CPU time used by *other* processes while a benchmark ran, in cores.

    Reads /proc/stat (all CPUs' busy jiffies) and this process tree's own CPU time at
    start and stop; ``other_cores`` = (machine busy - ours) / wall time.
    """

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def _busy_s() -> Optional[float]:
        try:
            with open("/proc/stat") as f:
                parts = f.readline().split()[1:]
        except OSError:
            return None
        v = [int(x) for x in parts]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s() -> float:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = time.time(), self._busy_s(), self._own_s()
        self.load0 = os.getloadavg()[0]

    def stop(self) -> dict:
        wall = max(time.time() - self.t0, 1e-9)
        busy1 = self._busy_s()
        own = self._own_s() - self.own0
        other = None if busy1 is None or self.busy0 is None else max(0.0, (busy1 - self.busy0 - own) / wall)
        return {"wall_s": wall, "own_cores": own / wall, "other_cores": other,
                "loadavg_start": self.load0, "loadavg_end": os.getloadavg()[0]}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    import PIL
    import torchvision

    try:
        import timm
        timm_v = timm.__version__
    except ImportError:  # pragma: no cover
        timm_v = "absent"
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(), "cpu": cpu_model(), "mem_gib": mem,
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm_v, "pillow": PIL.__version__, "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg": os.getloadavg(),
    }


def describe(m: dict) -> str:
    return (f"{m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']} GiB, torch {m['torch']}, torchvision "
            f"{m['torchvision']}, timm {m['timm']}, Pillow {m['pillow']}, python {m['python']}"
            + (f", GPU {m['cuda']}" if m.get("cuda") else ", no GPU"))


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB: VmHWM of /proc/self/status.
    (Not ru_maxrss: Linux carries the parent's RSS at fork into an exec'd child's
    ru_maxrss, so a child started by a big parent would report the parent's size.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- photographs

# Colour photographs scikit-image bundles (no download needed), plus its grayscale camera
# shot: real JPEG statistics (texture, skies, faces) rather than noise.
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
           "retina", "camera")


def make_photos(out_dir: str, *, n: int = 16, size=(500, 375), quality: int = 90) -> List[str]:
    """Write ``n`` JPEGs at about ImageNet's typical resolution (``size``, landscape; every
    other crop portrait) cut from skimage's bundled photographs. Returns their paths."""
    from PIL import Image
    from skimage import data

    os.makedirs(out_dir, exist_ok=True)
    sources = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in _PHOTOS]
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = size if (i // len(sources)) % 2 == 0 else size[::-1]
        # crop the source to the target aspect ratio (a different window per round), then resize
        W, H = src.size
        scale = min(W / w, H / h)
        cw, ch = int(w * scale), int(h * scale)
        k = i // len(sources)
        x0 = (W - cw) * (k % 3) // 2
        y0 = (H - ch) * ((k + 1) % 3) // 2
        img = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.LANCZOS)
        if _PHOTOS[i % len(_PHOTOS)] == "camera":
            img = img.convert("L")  # ImageNet has grayscale JPEGs too
        path = os.path.join(out_dir, f"photo_{i:03d}.jpg")
        img.save(path, "JPEG", quality=quality)
        paths.append(path)
    return paths


def write_split(paths: Sequence[str], root: str, list_path: str, num_classes: int) -> None:
    with open(list_path, "w") as f:
        for i, p in enumerate(paths):
            f.write(f"{os.path.relpath(p, root)} {i % num_classes}\n")


def jpeg_bytes(img, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------- baselines

def bare_resnet50(num_classes: int):
    """The plain model of the baselines: timm's resnet50 with its own fc (the same network
    gpaco builds as backbone + fc, so a ratio measures the framework, not the network)."""
    import timm

    return timm.create_model("resnet50", pretrained=False, num_classes=num_classes)


def batches(method, batch, size, num_classes, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        y = torch.randint(0, num_classes, (batch,), generator=g)
        if method in ("paco", "gpaco"):
            x = [torch.randn(batch, 3, size, size, generator=g) for _ in range(2)]
        else:
            x = torch.randn(batch, 3, size, size, generator=g)
        out.append((x, y))
    return out


class Bare:
    """The hand-written loop (in channels-last memory order when asked, as the engine's, so
    that the ratio measures the engine's overhead and not the layout)."""

    def __init__(self, batch, size, num_classes, steps, channels_last=False):
        torch.manual_seed(0)
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = bare_resnet50(num_classes).to(torch.device("cpu")).train().to(memory_format=self.fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        self.data = batches("ce", batch, size, num_classes, steps)

    def __call__(self) -> float:
        t0 = time.perf_counter()
        for x, y in self.data:
            loss = F.cross_entropy(self.model(x.contiguous(memory_format=self.fmt)), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return (time.perf_counter() - t0) / len(self.data)
