"""Input pipeline: images/s of one data-loader worker, gpaco's two-view pipelines against
the original's composition.

Photographs: JPEGs at about 500x375 cut from scikit-image's bundled photographs (see
``_common.make_photos``). One unit of work = one pass of ``dataset[i]`` over all of them
(decode + both views, as a DataLoader worker does before collation), single-threaded
(DataLoader workers run torch with one thread).

Baseline = what the original does (``ImageNetLT_moco.__getitem__`` + ``paco_lt.py``'s
augmentation lists): ``Image.open(f).convert('RGB')`` once, then
``[Compose(view1_ops)(img), Compose(view2_ops)(img)]`` with torchvision's PIL transforms,
MoCo's PIL GaussianBlur and timm's RandAugment. Ours = ``gpaco.data.SplitDataset`` with
``build_train_transform(aug)``. Ratio = ours images/s / baseline images/s.

Per strategy it also reports the CPU cores (one-thread workers) needed to feed one GPU at
2,500 images/s (a ResNet-50 in bf16), from the process CPU time per image, with and without
``--gpu-aug``. With it the workers only decode, crop and draw parameters
(``gpaco.data.gpu_aug.GpuAugViews``); the device half (``DeviceAugment``) is timed here on
the CPU, one thread, on the collated batch, and reported apart: it is not worker time, and
a GPU runs it in a fraction of that.

    python bench/pipeline_speed.py [--repeats 9] [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

from gpaco.data import NORMALIZATION, SplitDataset, build_train_transform  # noqa: E402
from gpaco.data.gpu_aug import build_gpu_aug  # noqa: E402

STRATEGIES = ("randcls_sim", "randcls_randclsstack", "sim_sim")
TARGET, AIM = 1.0, 1.5
GPU_RATE = 2500  # images/s of a ResNet-50 on one current GPU in bf16 (the figure)


# ----------------------------------------------------------------------------- baseline

class MocoGaussianBlur:
    """moco.loader.GaussianBlur of the original."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, x):
        return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.sigma[0], self.sigma[1])))


def original_views(aug: str, size: int = 224, randaug_n: int = 2, randaug_m: int = 10):
    """The original's per-view Compose lists (paco_lt.py), by strategy name."""
    from timm.data.auto_augment import rand_augment_transform

    normalize = T.Normalize(*NORMALIZATION["imagenet"])
    ra_params = dict(translate_const=int(size * 0.45), img_mean=(124, 116, 104))

    def ra():
        return rand_augment_transform(f"rand-n{randaug_n}-m{randaug_m}-mstd0.5", ra_params)

    sim = [T.RandomResizedCrop(size), T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.0)], p=1.0),
           T.RandomGrayscale(p=0.2), T.RandomApply([MocoGaussianBlur([.1, 2.])], p=0.5),
           T.RandomHorizontalFlip(), T.ToTensor(), normalize]
    randcls = [T.RandomResizedCrop(size, scale=(0.08, 1.)), T.RandomHorizontalFlip(),
               T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.0)], p=1.0), ra(), T.ToTensor(), normalize]
    stack = [T.RandomResizedCrop(size, scale=(0.08, 1.)), T.RandomHorizontalFlip(),
             T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.0)], p=1.0), T.RandomGrayscale(p=0.2),
             T.RandomApply([MocoGaussianBlur([.1, 2.])], p=0.5), ra(), T.ToTensor(), normalize]
    lists = {"sim": sim, "randcls": randcls, "randclsstack": stack}
    v1, v2 = aug.split("_")
    return [T.Compose(list(lists[v1])), T.Compose(list(lists[v2]))]


class OriginalDataset(torch.utils.data.Dataset):
    """ImageNetLT_moco.__getitem__ of the original: decode once, apply each view's Compose."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        return [self.transform[0](img), self.transform[1](img)], label


# ----------------------------------------------------------------------------- bench

def one_pass(dataset, seed, clock=time.perf_counter):
    def run():
        random.seed(seed)
        torch.manual_seed(seed)
        t0 = clock()
        for i in range(len(dataset)):
            dataset[i]
        return clock() - t0
    return run


def bench(aug, root, list_path, repeats, size):
    mean, std = NORMALIZATION["imagenet"]
    ours = SplitDataset(list_path, root, build_train_transform(aug, image_size=size, mean=mean, std=std))
    base = OriginalDataset(ours.samples, original_views(aug, size))
    n = len(ours)
    times = C.interleave({"ours": one_pass(ours, 0), "base": one_pass(base, 0)}, repeats, warmup=1)
    ratio = C.paired_ratio(times["base"], times["ours"])
    ips_o, ips_b = n / C.median(times["ours"]), n / C.median(times["base"])
    # Cores from CPU seconds per image (process time: what a worker occupies, whatever else
    # runs on the machine; a worker is single-threaded).
    cpu = C.interleave({"ours": one_pass(ours, 0, time.process_time), "base": one_pass(base, 0, time.process_time)},
                       max(3, repeats // 2), warmup=0)
    cores_o, cores_b = GPU_RATE * C.median(cpu["ours"]) / n, GPU_RATE * C.median(cpu["base"]) / n
    # --gpu-aug: worker half timed as above; device half timed on the CPU on the collated batch
    worker, device_aug = build_gpu_aug(aug, image_size=size, mean=mean, std=std)
    gpu_set = SplitDataset(list_path, root, worker)
    gpu_cpu = C.interleave({"gpu": one_pass(gpu_set, 0, time.process_time)}, max(3, repeats // 2), warmup=1)["gpu"]
    cores_g = GPU_RATE * C.median(gpu_cpu) / n
    batch = torch.utils.data.default_collate([gpu_set[i][0] for i in range(n)])

    def device_pass():
        t0 = time.process_time()
        device_aug(batch, torch.device("cpu"))
        return time.process_time() - t0

    dev_ms = 1e3 * C.median(C.interleave({"dev": device_pass}, 3, warmup=1)["dev"]) / n
    return [
        C.Row("pipeline", f"input pipeline {aug} (ours/original img/s)", ratio, TARGET, ">=",
              f"ours {ips_o:.0f} img/s, original {ips_b:.0f} img/s per worker; aim >= {AIM}; "
              f"spread {C.spread(times['ours']):.0%}/{C.spread(times['base']):.0%}"),
        # A worker is one core: cores needed to feed one GPU at GPU_RATE images/s.
        C.Row("pipeline", f"CPU cores per GPU at {GPU_RATE} img/s, {aug}", cores_o, None, "<=",
              f"augmentation on the CPU workers ({1e3 * cores_o / GPU_RATE:.1f} ms CPU per image); original "
              f"{cores_b:.1f} cores"),
        C.Row("pipeline", f"CPU cores per GPU at {GPU_RATE} img/s, {aug} --gpu-aug", cores_g, None, "<=",
              f"workers decode + crop + draw ({1e3 * cores_g / GPU_RATE:.1f} ms CPU per image); the device half, "
              f"measured on this CPU (1 thread, no GPU): {dev_ms:.1f} ms per image, not counted"),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=None, help="default 9 (quick: 5)")
    p.add_argument("--photos", type=int, default=None, help="JPEGs per pass (default 32, quick: 16)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 9)
    n_photos = args.photos or (16 if args.quick else 32)
    C.set_threads(1)  # what a DataLoader worker runs with
    load = C.LoadMeter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = C.make_photos(os.path.join(tmp, "img"), n=n_photos)
        list_path = os.path.join(tmp, "train.txt")
        C.write_split(paths, tmp, list_path, num_classes=4)
        rows = [row for aug in STRATEGIES for row in bench(aug, tmp, list_path, repeats, args.size)]
    info = load.stop()
    print(f"input pipeline, {n_photos} JPEGs ~500x375, S={args.size}, 1 thread, {repeats} interleaved repeats; "
          f"other processes used {info['other_cores'] or 0:.2f} cores meanwhile")
    C.print_rows(rows)
    C.rows_to_json(rows, args.json, {"load": info})
    return C.exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
