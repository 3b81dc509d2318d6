"""Robustness benchmarks: ImageNet-C-style corruption trees, ImageNet-R, ImageNet-Sketch (SPEC §5).

Folder layouts read here (all ``ImageFolder``-like: one folder per class):

* **ImageNet-C**: ``ROOT/<corruption>/<severity 1..5>/<wnid>/<image>``; the 15 corruptions of
  :data:`gpaco.metrics.CORRUPTIONS`. Class index = position of the wnid folder in sorted
  order (torchvision ``ImageFolder``), so all 1000 folders must be there.
* **Our corrupted trees** (:func:`make_corrupted_tree`, ``tools/make_corrupted.py``): the same
  ``ROOT/<corruption>/<severity>/<class>/<image>`` but the class folders are named by the
  **label index** of the split list (``0``, ``1``, ... ``999``), so any subset of classes works.
  ``ROOT/meta.json`` records how the tree was made, ``ROOT/subset.txt`` the source images in
  our split-list format (evaluate the same images uncorrupted with ``--test-list``).
* **ImageNet-R**: ``ROOT/<wnid>/<image>``, the 200 ImageNet-R classes; sorted folder ``i`` is
  column ``IMAGENET_R_INDICES[i]`` of the 1000-way head (the argmax is over those 200 columns).
* **ImageNet-Sketch**: ``ROOT/<wnid>/<image>``, 1000 classes, the full head.

A folder tree whose class folders are all decimal integers is read as label-index named;
otherwise as sorted wnids.

Naming of the corruption figures (SPEC §5 "naming trap"): the paper's "mCE" is the
*unnormalised* mean corruption error, ``100 * mean_c E_c`` (:data:`MCE_KEYS`
``mce_unnormalised``); its "rel. mCE" is the AlexNet-normalised ``100 * mean_c E_c / E_c^AlexNet``
(``mce_alexnet_normalised``), which is Hendrycks & Dietterich's standard mCE; neither is
Hendrycks' "relative mCE" (clean error subtracted). ``mce_baseline_normalised`` divides by a
chosen baseline run's per-corruption errors instead of AlexNet's (AlexNet constants exist only
for ImageNet-C).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from gpaco.metrics import ALEXNET_ERRORS, CORRUPTIONS, IMAGENET_R_INDICES, corruption_errors

__all__ = [
    "IMAGE_EXTENSIONS", "SEVERITIES", "ImageFolderDataset", "find_corruption_tree", "evaluate_corruptions",
    "corruption_table", "load_baseline_errors", "make_corrupted_tree", "MCE_NAMES", "TREE_FORMAT_VERSION",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
SEVERITIES = (1, 2, 3, 4, 5)
TREE_FORMAT_VERSION = 1

#: Our key -> what the number is, with the paper's name, for printouts and docs.
MCE_NAMES = {
    "mce_unnormalised": 'mean corruption error, unnormalised = 100 * mean_c E_c (the paper\'s "mCE")',
    "mce_alexnet_normalised": ('mean corruption error normalised by AlexNet = 100 * mean_c E_c / E_c^AlexNet '
                               '(the paper\'s "rel. mCE"; Hendrycks\' standard mCE)'),
    "mce_baseline_normalised": "mean corruption error normalised by the baseline run = 100 * mean_c E_c / E_c^base",
}


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` (images sorted by name within a class).

    Class index: ``int(folder)`` when every class folder is a decimal integer (our label-index
    trees), else the folder's position in sorted order (torchvision ``ImageFolder``, ImageNet
    wnids). ``num_classes`` (when given) bounds the label-index case and must equal the
    number of folders in the sorted case, where a missing folder would shift every index.
    """

    def __init__(self, root: str, transform: Optional[Callable] = None, *, num_classes: Optional[int] = None,
                 expect_classes: Optional[int] = None) -> None:
        self.root, self.transform = os.fspath(root), transform
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"{self.root}: image folder not found (expected <root>/<class>/<image>)")
        classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"{self.root}: no class folders (expected <root>/<class>/<image>)")
        self.label_index_named = all(c.isascii() and c.isdigit() for c in classes)
        if self.label_index_named:
            index = {c: int(c) for c in classes}
            top = max(index.values())
            if num_classes is not None and top >= num_classes:
                raise ValueError(f"{self.root}: class folder {top} is out of range for a {num_classes}-class model")
        else:
            want = expect_classes if expect_classes is not None else num_classes
            if want is not None and len(classes) != want:
                raise ValueError(
                    f"{self.root}: {len(classes)} class folders, expected {want}: with wnid-named folders the class "
                    f"index is the sorted folder position, so every class folder must be present (or name the "
                    f"folders by label index, as tools/make_corrupted.py does)")
            index = {c: i for i, c in enumerate(classes)}
        self.classes = classes
        self.class_to_idx = index
        self.samples: List[Tuple[str, int]] = []
        for c in classes:
            folder = os.path.join(self.root, c)
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
            self.samples += [(os.path.join(folder, n), index[c]) for n in names]
        if not self.samples:
            raise FileNotFoundError(f"{self.root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:
            raise OSError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
        return (self.transform(img) if self.transform else img), target


# --------------------------------------------------------------------------- ImageNet-C-style trees


def find_corruption_tree(root: str) -> Tuple[Dict[str, Dict[int, str]], List[str]]:
    """``({corruption: {severity: folder}}, notes)`` of the known corruptions under ``root``.

    Folders that are not one of the 15 corruptions are skipped and named in the notes.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--corrupted-root {root}: no such folder (expected <root>/<corruption>/<1..5>/...)")
    notes: List[str] = []
    tree: Dict[str, Dict[int, str]] = {}
    present = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    extra = [p for p in present if p not in CORRUPTIONS]
    if extra:
        notes.append(f"ignored folders that are not one of the 15 corruptions: {', '.join(extra)}")
    for c in CORRUPTIONS:
        if c not in present:
            continue
        sev = {}
        for s in SEVERITIES:
            folder = os.path.join(root, c, str(s))
            if os.path.isdir(folder):
                sev[s] = folder
        if sev:
            tree[c] = sev
    if not tree:
        raise FileNotFoundError(f"--corrupted-root {root}: none of the corruption folders "
                                f"({', '.join(CORRUPTIONS[:3])}, ...) with severity folders 1..5")
    missing = [c for c in CORRUPTIONS if c not in tree]
    if missing:
        notes.append(f"missing corruptions (the means cover only the {len(tree)} present): {', '.join(missing)}")
    partial = [f"{c} ({sorted(set(SEVERITIES) - set(s))})" for c, s in tree.items() if len(s) != len(SEVERITIES)]
    if partial:
        notes.append(f"missing severities: {', '.join(partial)}")
    return tree, notes


def evaluate_corruptions(
    root: str,
    evaluate_folder: Callable[[str], dict],
    *,
    baseline_errors: Optional[Mapping[str, float]] = None,
    baseline_label: Optional[str] = None,
    max_folders: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Top-1 on every ``root/<corruption>/<severity>`` folder and the corruption errors.

    Args:
        evaluate_folder: folder -> metrics dict with ``top1`` (percent) and ``num_samples``
            (and ``label_index_named``: whether the folder used label-index class names).
        baseline_errors: ``{corruption: E_c}`` of a baseline run, for ``mce_baseline_normalised``.
        max_folders: evaluate only this many folders (dry runs).
    Returns:
        ``accuracy_by_severity`` ({c: [fraction per severity]}), ``error_by_severity`` (percent),
        ``num_images`` ({c: [n per severity]}), and the keys of
        :func:`gpaco.metrics.corruption_errors` (``corruption_errors``, ``mce_unnormalised``,
        ``mce_alexnet_normalised`` (None unless an ImageNet-C wnid tree with all 15),
        ``mce_baseline_normalised``), plus ``root``, ``notes``, ``severities``.
    """
    tree, notes = find_corruption_tree(root)
    acc: Dict[str, List[float]] = {}
    counts: Dict[str, List[int]] = {}
    sev_used: Dict[str, List[int]] = {}
    imagenet_style = True
    done = 0
    t0 = time.time()
    for c, severities in tree.items():
        for s, folder in sorted(severities.items()):
            if max_folders is not None and done >= max_folders:
                break
            m = evaluate_folder(folder)
            imagenet_style &= not m.get("label_index_named", False)
            acc.setdefault(c, []).append(m["top1"] / 100.0)
            counts.setdefault(c, []).append(int(m["num_samples"]))
            sev_used.setdefault(c, []).append(s)
            done += 1
        if c in acc:
            log(f"  {c:<18s} top-1 by severity " + " ".join(f"{100 * a:6.2f}" for a in acc[c])
                + f"  ({time.time() - t0:.0f}s)")
    if baseline_errors is not None:
        absent = [c for c in acc if c not in baseline_errors]
        if absent:
            raise ValueError(f"the --mce-baseline run has no errors for {', '.join(absent)}")
    res = corruption_errors(acc, baseline_errors=baseline_errors)
    full_imagenet_c = imagenet_style and set(acc) == set(CORRUPTIONS) and \
        all(len(v) == len(SEVERITIES) for v in acc.values())
    if not full_imagenet_c:
        res["mce_alexnet_normalised"] = None
        notes.append("no AlexNet-normalised mCE: the AlexNet constants are for the full ImageNet-C (15 "
                     "corruptions x 5 severities, wnid class folders) only" +
                     ("; normalise by a baseline run instead (--mce-baseline)" if baseline_errors is None else ""))
    res.update({
        "root": os.fspath(root),
        "accuracy_by_severity": acc,
        "error_by_severity": {c: [100.0 * (1 - a) for a in v] for c, v in acc.items()},
        "severities": sev_used,
        "num_images": counts,
        "notes": notes,
        "names": {k: v for k, v in MCE_NAMES.items() if k in res},
    })
    if baseline_errors is not None:
        res["baseline"] = baseline_label
        res["baseline_errors"] = {c: float(baseline_errors[c]) for c in acc}
    return res


def corruption_table(res: Mapping) -> str:
    """The per-corruption table (errors in percent) and the three mean corruption errors, named."""
    errs = res["corruption_errors"]
    base = res.get("baseline_errors")
    alex = res.get("mce_alexnet_normalised") is not None
    sev_cols = max(len(v) for v in res["error_by_severity"].values())
    head = f"{'corruption':<18s} " + " ".join(f"{'s' + str(i + 1):>6s}" for i in range(sev_cols)) + \
        f" | {'E_c':>6s}" + (f" {'/AlexNet':>8s}" if alex else "") + (f" {'/base':>7s}" if base else "")
    lines = ["error (%) per corruption and severity; E_c = mean over severities", head, "-" * len(head)]
    for c, e in errs.items():
        row = f"{c:<18s} " + " ".join(f"{v:6.2f}" for v in res["error_by_severity"][c])
        row += "       " * (sev_cols - len(res["error_by_severity"][c]))
        row += f" | {100 * e:6.2f}"
        if alex:
            row += f" {100 * e / ALEXNET_ERRORS[c]:8.2f}"
        if base:
            row += f" {100 * e / base[c]:7.2f}"
        lines.append(row)
    lines.append("-" * len(head))
    lines.append(f"mCE, unnormalised (the paper's \"mCE\"; 100 * mean_c E_c): {res['mce_unnormalised']:.2f}")
    if alex:
        lines.append("rel. mCE, AlexNet-normalised (the paper's \"rel. mCE\" = Hendrycks' standard mCE; "
                     f"100 * mean_c E_c / E_c^AlexNet): {res['mce_alexnet_normalised']:.2f}")
    else:
        lines.append("rel. mCE, AlexNet-normalised: n/a (AlexNet constants exist only for the full ImageNet-C)")
    if base:
        lines.append(f"mCE normalised by the baseline {res.get('baseline')} (100 * mean_c E_c / E_c^base; "
                     f"the baseline itself = 100): {res['mce_baseline_normalised']:.2f}")
    for n in res.get("notes", []):
        lines.append(f"note: {n}")
    return "\n".join(lines)


def load_baseline_errors(path: str) -> Tuple[Dict[str, float], str]:
    """``{corruption: E_c}`` from a baseline evaluation's ``metrics.json`` (or its folder)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--mce-baseline {path}: not found (give the metrics.json that "
                                f"tools/eval.py --corrupted-root wrote for the baseline run, or its folder)")
    with open(path) as f:
        m = json.load(f)
    errors = (m.get("corruption") or {}).get("corruption_errors")
    if not errors:
        raise ValueError(f"--mce-baseline {path} has no corruption results (run tools/eval.py --corrupted-root "
                         f"on the baseline first)")
    return {c: float(v) for c, v in errors.items()}, path


def imagenet_r_columns(num_classes: int) -> List[int]:
    """Head columns of the 200 ImageNet-R classes, in ImageNet-R's sorted-folder order."""
    from gpaco.metrics import imagenet_r_mask

    mask = imagenet_r_mask(num_classes)
    cols = mask.nonzero().flatten().tolist()
    assert cols == list(IMAGENET_R_INDICES)
    return cols


# --------------------------------------------------------------------------- building trees


@contextlib.contextmanager
def _seeded_skimage_noise():
    """corrupt-tta's impulse_noise calls skimage's random_noise without a generator (fresh OS
    entropy each call); give it one drawn from NumPy's seeded global RNG so trees are reproducible."""
    import corrupt_tta.corruptions as cc

    original = cc.random_noise

    def seeded(image, *args, **kwargs):
        kwargs.setdefault("rng", np.random.default_rng(np.random.randint(0, 2 ** 31 - 1)))
        return original(image, *args, **kwargs)

    cc.random_noise = seeded
    try:
        yield
    finally:
        cc.random_noise = original


def _fit(img: Image.Image, size: Optional[int], resize_size: Optional[int]) -> Image.Image:
    if not size:
        return img
    from torchvision.transforms import functional as TF

    img = TF.resize(img, resize_size or size, interpolation=TF.InterpolationMode.BILINEAR)
    return TF.center_crop(img, size)


def _corrupt_one(job) -> int:
    """Write every corruption/severity of one source image; returns the number of files."""
    (i, path, label, out_dir, corruptions, severities, seed, size, resize_size) = job
    import corrupt_tta

    with Image.open(path) as im:
        img = _fit(im.convert("RGB"), size, resize_size)
    x = np.asarray(img, dtype=np.uint8)
    stem = os.path.splitext(os.path.basename(path))[0]
    n = 0
    with _seeded_skimage_noise():
        for c in corruptions:
            ci = CORRUPTIONS.index(c)
            for s in severities:
                state = np.random.SeedSequence([seed, i, ci, s]).generate_state(1)[0]
                np.random.seed(int(state))
                y = corrupt_tta.corrupt(x, severity=s, corruption_name=c)
                y = np.uint8(np.clip(np.rint(np.asarray(y, dtype=np.float64)), 0, 255))
                folder = os.path.join(out_dir, c, str(s), str(label))
                os.makedirs(folder, exist_ok=True)
                Image.fromarray(y).save(os.path.join(folder, f"{i:06d}_{stem}.png"))
                n += 1
    return n


def select_subset(samples: Sequence[Tuple[str, int]], per_class: Optional[int]) -> List[int]:
    """Indices of the first ``per_class`` samples of every class, in list order (all when None)."""
    if not per_class:
        return list(range(len(samples)))
    seen: Dict[int, int] = {}
    keep = []
    for i, (_, label) in enumerate(samples):
        if seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    return keep


def make_corrupted_tree(
    list_path: str,
    data_root: str,
    out_dir: str,
    *,
    corruptions: Iterable[str] = CORRUPTIONS,
    severities: Iterable[int] = SEVERITIES,
    per_class: Optional[int] = None,
    size: Optional[int] = None,
    resize_size: Optional[int] = None,
    seed: int = 0,
    workers: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Write ``out_dir/<corruption>/<severity>/<label>/<index>_<name>.png`` for a split list.

    Uses ``corrupt-tta`` (the ImageNet-C corruption functions) on each image, optionally
    first resized (shorter side ``resize_size``, default ``size``) and center-cropped to
    ``size`` (ImageNet-C corrupts 224x224 crops; corrupt at the model's input size). Each
    (image, corruption, severity) has its own seed from ``seed``, so the tree is the same
    with any number of ``workers``. ``per_class``: only the first N images of every class
    (list order). Also writes ``subset.txt`` (the source lines used, split-list format) and,
    last, ``meta.json``. An existing complete tree with the same parameters is kept as is.

    Returns the meta dict (``skipped`` True when nothing had to be written).
    """
    from gpaco.data.splits import read_split

    corruptions = list(corruptions)
    severities = [int(s) for s in severities]
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruptions {unknown}; choose from {', '.join(CORRUPTIONS)}")
    if any(s not in SEVERITIES for s in severities):
        raise ValueError(f"severities must be in 1..5, got {severities}")
    samples = read_split(list_path, data_root)
    keep = select_subset(samples, per_class)
    params = {"version": TREE_FORMAT_VERSION, "source_list": os.path.abspath(list_path),
              "data_root": os.path.abspath(data_root), "corruptions": corruptions, "severities": severities,
              "per_class": per_class, "size": size, "resize_size": resize_size, "seed": seed}
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.isfile(meta_path):
        try:
            with open(meta_path) as f:
                old = json.load(f)
        except ValueError:
            old = {}
        if old.get("params") == params:
            return {**old, "skipped": True}
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not a tree made with these parameters; pass "
                                  f"--overwrite to replace it (only its corruption folders, subset.txt and "
                                  f"meta.json are removed)")
        for name in list(CORRUPTIONS) + ["subset.txt", "meta.json"]:
            p = os.path.join(out_dir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(i, samples[i][0], samples[i][1], out_dir, corruptions, severities, seed, size, resize_size)
            for i in keep]
    t0 = time.time()
    written = 0
    if workers and workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            for n in pool.map(_corrupt_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                written += n
    else:
        for k, job in enumerate(jobs):
            written += _corrupt_one(job)
            if (k + 1) % 500 == 0:
                log(f"  {k + 1}/{len(jobs)} images ({time.time() - t0:.0f}s)")
    root = os.path.abspath(data_root)
    with open(os.path.join(out_dir, "subset.txt"), "w") as f:
        for i in keep:
            f.write(f"{os.path.relpath(samples[i][0], root)} {samples[i][1]}\n")
    labels = [samples[i][1] for i in keep]
    counts = np.bincount(labels, minlength=max(labels) + 1 if labels else 0).tolist()
    meta = {"params": params, "num_images": len(keep), "files": written, "class_counts": counts,
            "layout": "<corruption>/<severity>/<label index>/<list index>_<name>.png",
            "seconds": round(time.time() - t0, 1)}
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, meta_path)
    return {**meta, "skipped": False}
