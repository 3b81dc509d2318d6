"""``gpaco-predict`` (``tools/predict.py``): class names and probabilities of images, from a trained run.

    gpaco-predict --checkpoint runs/mydata/gpaco photos/ cat.jpg more.txt --top-k 3 --output predictions.csv

* Inputs: image files, folders (every image below them, sorted by path) and list files
  (``.txt``/``.lst``: one image per line, ``path`` or a split list's ``path label``; a
  label adds ``label``/``label_name`` columns and the top-1 accuracy). A list's paths are
  relative to ``--data-root``, else to the run's data root or the list's own folder,
  whichever holds its first image.
* The model is rebuilt from the checkpoint as ``tools/eval.py`` rebuilds it
  (:func:`gpaco.methods.rebuild.build_model_from_checkpoint`), with the evaluation transform
  of the run's flags (image size, resize, normalisation, interpolation) and the method's
  test-time forward (``eval_forward``: ResLT's branch combination, RIDE's experts, GenDD's
  generated features), so its top-1 is the prediction ``tools/eval.py`` counts.
* Class names: ``--class-names FILE``, else the checkpoint's ``class_names``, the
  ``classes.txt`` beside the run's split lists, or the run folder's
  (:func:`gpaco.classification.report.find_class_names`); else the class indices.
* Output: a CSV (``path,pred,pred_name,prob`` then ``top2,top2_name,top2_prob`` ... up to
  ``--top-k``; probabilities are the softmax of the test-time logits) and a table of the
  first rows on stdout.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from gpaco.data.robustness import IMAGE_EXTENSIONS
from gpaco.data.splits import DataError, png_problem, to_rgb
from gpaco.engine.args import FlagError, HelpFormatter

__all__ = ["ImageItem", "Predictor", "collect_images", "read_image_list", "images_below", "resolve_checkpoint",
           "load_predictor", "predict_images", "write_predictions_csv", "predictions_table", "LIST_EXTENSIONS",
           "build_parser", "main", "cli"]

#: Inputs read as lists of images (one per line) rather than as images.
LIST_EXTENSIONS = (".txt", ".lst")
# What PIL raises for missing, empty, truncated or garbled files (as the split lists' reader).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# --------------------------------------------------------------------------- inputs


@dataclass
class ImageItem:
    """One image to predict: its path, its label when a split list gave one, and where it was
    named (``list.txt:3``) for error messages."""

    path: str
    label: Optional[int] = None
    source: Optional[str] = None


def images_below(folder: str) -> List[str]:
    """Every image file under ``folder`` (sub-folders included, hidden entries skipped), sorted
    by path; :class:`DataError` when there is none."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in files
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder or its sub-folders")
    return sorted(found)


def _parse_list_line(line: str) -> Tuple[str, Optional[int]]:
    """``path`` or ``path label`` (a split list's line; the path may hold spaces)."""
    parts = line.rsplit(None, 1)
    if len(parts) == 2 and parts[1].lstrip("-").isdigit():
        return parts[0], int(parts[1])
    return line, None


def read_image_list(path: str, *, data_root: Optional[str] = None, fallback_roots: Sequence[str] = ()
                    ) -> List[ImageItem]:
    """The images a list file names, one per line (``path`` or ``path label``; blank lines and
    ``#`` comments skipped). Relative paths are joined to ``data_root`` when given, else to the
    first of ``fallback_roots`` and the list's own folder that holds the list's first image."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text list of images ({e})") from None
    entries = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            entries.append((number, *_parse_list_line(line)))
    if not entries:
        raise DataError(f"{path}: the list names no image (expected one image path per line)")
    first = entries[0][1]
    if data_root is not None:
        root = data_root
    else:
        candidates = [r for r in (*fallback_roots, os.path.dirname(os.path.abspath(path))) if r]
        root = next((r for r in candidates if os.path.exists(os.path.join(r, first))), None)
        if root is None:
            raise DataError(f"{path}:{entries[0][0]}: image {first} not found under "
                            f"{' or '.join(dict.fromkeys(candidates))}; pass --data-root, the folder the list's "
                            f"paths are relative to")
    return [ImageItem(os.path.join(root, rel), label, f"{path}:{number}") for number, rel, label in entries]


def collect_images(inputs: Sequence[str], *, data_root: Optional[str] = None,
                   fallback_roots: Sequence[str] = ()) -> List[ImageItem]:
    """The images of ``inputs`` in order: an image file, every image below a folder
    (:func:`images_below`), or the images of a list file (:func:`read_image_list`)."""
    items: List[ImageItem] = []
    for name in inputs:
        if os.path.isdir(name):
            items += [ImageItem(p) for p in images_below(name)]
        elif not os.path.exists(name):
            raise FileNotFoundError(f"{name}: no such image, folder or list file")
        elif name.lower().endswith(LIST_EXTENSIONS):
            items += read_image_list(name, data_root=data_root, fallback_roots=fallback_roots)
        elif name.lower().endswith(IMAGE_EXTENSIONS):
            items.append(ImageItem(name))
        else:
            raise DataError(f"{name}: neither an image ({', '.join(IMAGE_EXTENSIONS)}), a folder nor a list of "
                            f"images ({', '.join(LIST_EXTENSIONS)})")
    return items


def load_rgb(item: ImageItem) -> Image.Image:
    """The image as 8-bit RGB, decoded as the split lists' reader decodes it (full decode, PNG
    chunks checked); :class:`DataError` naming the file (and its list line)."""
    where = f" (listed at {item.source})" if item.source else ""
    try:
        with open(item.path, "rb") as f:
            data = f.read()
        if not data:
            raise ValueError("empty file (0 bytes)")
        problem = png_problem(data)
        if problem:
            raise ValueError(problem)
        with Image.open(io.BytesIO(data)) as img:
            return to_rgb(img)  # convert() forces the full decode inside the try
    except FileNotFoundError:
        raise DataError(f"{item.path}: image not found{where}") from None
    except _IMAGE_ERRORS as e:
        raise DataError(f"{item.path}: cannot read image ({type(e).__name__}: {e}){where}") from None


class _ImageFiles(Dataset):
    """``items[i] -> (transform(image) [3, H, W], i)``."""

    def __init__(self, items: Sequence[ImageItem], transform: Callable) -> None:
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.transform(load_rgb(self.items[index])), index


# --------------------------------------------------------------------------- the model


@dataclass
class Predictor:
    """A trained model ready to predict: the model in eval mode on ``device``, the method's
    test-time ``forward`` (None: ``model(x)``), the evaluation ``transform`` and the class names."""

    model: nn.Module
    forward: Optional[Callable]
    transform: Callable
    class_names: Optional[List[str]]
    num_classes: int
    device: torch.device
    checkpoint: str
    method: str
    arch: str
    settings: Dict[str, object] = field(default_factory=dict)  # image_size, resize_size, norm, interpolation

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax of the test-time logits: images [B, 3, H, W] -> [B, C] float32 on ``device``."""
        self.model.eval()
        images = images.to(self.device, non_blocking=True)
        out = self.model(images) if self.forward is None else self.forward(self.model, images)
        if isinstance(out, dict):  # a forward with extra heads: "logits" is the prediction
            out = out["logits"]
        return torch.softmax(out.float(), dim=1)

    def name(self, c: int) -> str:
        return self.class_names[c] if self.class_names is not None else str(c)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run folder's ``best.pth`` (else its ``checkpoint.pth``)."""
    if os.path.isdir(path):
        for name in ("best.pth", "checkpoint.pth"):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise FlagError(f"--checkpoint {path}: the folder holds no best.pth or checkpoint.pth (a finished "
                        f"tools/train.py run folder, or the checkpoint file itself)")
    if not os.path.isfile(path):
        raise FlagError(f"--checkpoint {path}: no such file or run folder")
    return path


def load_predictor(checkpoint: str, *, device: str = "cpu", class_names: Optional[Sequence[str]] = None,
                   image_size: Optional[int] = None, resize_size: Optional[int] = None, norm: Optional[str] = None,
                   interpolation: Optional[str] = None) -> Predictor:
    """The :class:`Predictor` of a checkpoint file or run folder. Unset transform settings are the
    run's training flags (as tools/eval.py resolves them); ``class_names`` override the run's."""
    from gpaco.checkpoint import CheckpointError
    from gpaco.classification.evaluate import resolve_from_checkpoint
    from gpaco.classification.report import check_class_names, find_class_names
    from gpaco.data.transforms import NORMALIZATION, build_eval_transform
    from gpaco.methods import get_method
    from gpaco.methods.rebuild import build_model_from_checkpoint
    from gpaco.models.convert import CheckpointMismatchError, read_checkpoint

    path = resolve_checkpoint(checkpoint)
    loaded = read_checkpoint(path)
    train_args = loaded.meta.get("args") or {}
    settings = argparse.Namespace(method=None, arch=None, proj_dim=None, queue_size=None, norm=norm,
                                  image_size=image_size, resize_size=resize_size, interpolation=interpolation)
    resolve_from_checkpoint(settings, train_args)
    try:
        model, report = build_model_from_checkpoint(
            loaded, defaults={"proj_dim": settings.proj_dim, "queue_size": settings.queue_size})
    except CheckpointMismatchError as e:
        raise CheckpointError(str(e)) from None
    num_classes = int(model.fc.out_features)
    torch_device = torch.device(device)
    model = model.to(torch_device).eval()
    mean, std = NORMALIZATION[settings.norm]
    try:
        transform = build_eval_transform(settings.image_size, resize_size=settings.resize_size, mean=mean, std=std,
                                         interpolation=settings.interpolation)
    except ValueError as e:
        raise FlagError(f"--image-size/--resize-size: {e}") from None
    if class_names is not None:
        names = check_class_names(class_names, num_classes, "--class-names")
    else:
        lists = [train_args.get(k) for k in ("train_list", "val_list", "test_list", "data_root")]
        names = find_class_names(checkpoint=path, checkpoint_meta=loaded.meta, paths=lists, num_classes=num_classes)
    return Predictor(model=model, forward=get_method(report.method).eval_forward, transform=transform,
                     class_names=names, num_classes=num_classes, device=torch_device, checkpoint=path,
                     method=report.method, arch=report.arch,
                     settings={"image_size": settings.image_size, "resize_size": settings.resize_size,
                               "norm": settings.norm, "interpolation": settings.interpolation,
                               "data_root": train_args.get("data_root")})


@torch.no_grad()
def predict_images(predictor: Predictor, items: Sequence[ImageItem], *, batch_size: int = 64,
                   workers: int = 0) -> Tensor:
    """Probabilities [N, C] (float32, CPU) of ``items`` in order."""
    loader = DataLoader(_ImageFiles(items, predictor.transform), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=predictor.device.type == "cuda")
    out = torch.empty(len(items), predictor.num_classes)
    for images, index in loader:
        out[index] = predictor.probabilities(images).cpu()
    return out


# --------------------------------------------------------------------------- output


def _top(probs: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    return probs.topk(min(k, probs.shape[1]), dim=1)


def write_predictions_csv(out: TextIO, items: Sequence[ImageItem], probs: Tensor, name: Callable[[int], str],
                          top_k: int) -> None:
    """``path[,label,label_name],pred,pred_name,prob[,top2,top2_name,top2_prob,...]``, one row per
    image; probabilities with 6 decimals."""
    values, indices = _top(probs, top_k)
    labelled = any(it.label is not None for it in items)
    w = csv.writer(out)
    header = ["path", *(["label", "label_name"] if labelled else []), "pred", "pred_name", "prob"]
    for r in range(2, values.shape[1] + 1):
        header += [f"top{r}", f"top{r}_name", f"top{r}_prob"]
    w.writerow(header)
    for it, vals, idx in zip(items, values.tolist(), indices.tolist()):
        row = [it.path]
        if labelled:
            row += ["", ""] if it.label is None else [it.label, name(it.label)]
        for v, c in zip(vals, idx):
            row += [c, name(c), f"{v:.6f}"]
        w.writerow(row)


def predictions_table(items: Sequence[ImageItem], probs: Tensor, name: Callable[[int], str], *, top_k: int = 3,
                      limit: Optional[int] = 20) -> str:
    """The first ``limit`` predictions as a table (image, prediction with its probability, the
    next ones), plus the top-1 accuracy over the labelled images."""
    values, indices = _top(probs, top_k)
    shown = len(items) if limit is None or limit < 0 else min(limit, len(items))
    labelled = any(it.label is not None for it in items)
    rows = []
    for it, vals, idx in zip(items[:shown], values.tolist(), indices.tolist()):
        cells = [it.path, *([name(it.label) if it.label is not None else ""] if labelled else []),
                 f"{name(idx[0])} ({100 * vals[0]:.1f}%)",
                 ", ".join(f"{name(c)} ({100 * v:.1f}%)" for c, v in zip(idx[1:], vals[1:]))]
        rows.append(cells)
    head = ["image", *(["label"] if labelled else []), "prediction", "next" if values.shape[1] > 1 else ""]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if shown < len(items):
        lines.append(f"... {len(items) - shown} more")
    if labelled:
        known = [(it.label, int(i[0])) for it, i in zip(items, indices.tolist()) if it.label is not None]
        hits = sum(a == b for a, b in known)
        lines.append(f"top-1 on the {len(known)} labelled images: {100 * hits / len(known):.2f}%")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    from gpaco.data.transforms import NORMALIZATION
    from gpaco.engine.cli import add_debug_flag

    p = argparse.ArgumentParser(prog="gpaco-predict", formatter_class=HelpFormatter,
                                description="Class names and probabilities of images from a trained run: the top-k "
                                            "classes of each image into a CSV, the first rows printed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (every image below them) or list files (.txt/.lst: one image per line, "
                        "'path' or a split list's 'path label')")
    p.add_argument("--checkpoint", required=True, metavar="RUN_OR_FILE",
                   help="a run folder (its best.pth, else checkpoint.pth) or a checkpoint file tools/eval.py reads")
    p.add_argument("--top-k", type=int, default=5, help="classes per image in the CSV (at most the class count)")
    p.add_argument("--output", "-o", default="predictions.csv",
                   help="the CSV to write (replaced if it exists); '-' prints the CSV instead of the table")
    p.add_argument("--show", type=int, default=20, help="rows of the printed table (-1: all, 0: none)")
    p.add_argument("--class-names", default=None, metavar="FILE",
                   help="classes.txt (one name per line, line i = class i); default: the run's own names, else "
                        "class indices")
    p.add_argument("--data-root", default=None,
                   help="folder the paths of list files are relative to (default: the run's --data-root or the "
                        "list's folder, whichever holds its first image)")
    p.add_argument("--batch-size", "-b", type=int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=int, default=0, help="data loader processes decoding images")
    p.add_argument("--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda, cuda:1 ...")
    g = p.add_argument_group("evaluation transform (default: the run's training flags, as tools/eval.py)")
    g.add_argument("--image-size", type=int, default=None, help="center crop size")
    g.add_argument("--resize-size", type=int, default=None, help="resize of the shorter side before the crop")
    g.add_argument("--norm", default=None, choices=tuple(NORMALIZATION), help="normalisation statistics")
    g.add_argument("--interpolation", default=None, choices=("bilinear", "bicubic"), help="resize interpolation")
    add_debug_flag(p)
    return p


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FlagError(f"--device {name}: not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlagError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Returns ``{"items", "probs" [N, C], "class_names", "checkpoint", "output"}``."""
    from gpaco.classification.report import read_class_names

    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise FlagError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1 or args.workers < 0:
        raise FlagError("--batch-size must be >= 1 and --workers >= 0")
    if args.data_root is not None and not os.path.isdir(args.data_root):
        raise FlagError(f"--data-root {args.data_root}: no such folder")
    names = read_class_names(args.class_names) if args.class_names else None
    resolve_checkpoint(args.checkpoint)  # a wrong path or input is said before the model is read
    missing = next((name for name in args.inputs if not os.path.exists(name)), None)
    if missing is not None:
        raise FileNotFoundError(f"{missing}: no such image, folder or list file")
    predictor = load_predictor(args.checkpoint, device=_device(args.device), class_names=names,
                               image_size=args.image_size, resize_size=args.resize_size, norm=args.norm,
                               interpolation=args.interpolation)
    run_root = predictor.settings.get("data_root")
    items = collect_images(args.inputs, data_root=args.data_root,
                           fallback_roots=[run_root] if isinstance(run_root, str) and os.path.isdir(run_root) else [])
    if not items:
        raise DataError("no images to predict")
    bad = [it for it in items if it.label is not None and not 0 <= it.label < predictor.num_classes]
    if bad:
        raise DataError(f"{bad[0].source}: label {bad[0].label} is out of range for the {predictor.num_classes}-class "
                        f"model")
    probs = predict_images(predictor, items, batch_size=args.batch_size, workers=args.workers)
    if args.output == "-":
        write_predictions_csv(sys.stdout, items, probs, predictor.name, args.top_k)
    else:
        parent = os.path.dirname(os.path.abspath(args.output))
        os.makedirs(parent, exist_ok=True)
        from gpaco.engine.logging import atomic_path

        with atomic_path(args.output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            write_predictions_csv(f, items, probs, predictor.name, args.top_k)
        if args.show:
            print(predictions_table(items, probs, predictor.name, top_k=min(args.top_k, 3), limit=args.show))
        named = "class names" if predictor.class_names is not None else "class indices (no class names found)"
        print(f"wrote {args.output}: {len(items)} images, top-{min(args.top_k, predictor.num_classes)} of "
              f"{predictor.num_classes} classes by {named}; {predictor.method} {predictor.arch} from "
              f"{predictor.checkpoint}")
    return {"items": items, "probs": probs, "class_names": predictor.class_names, "checkpoint": predictor.checkpoint,
            "output": args.output}


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """tools/predict.py and the ``gpaco-predict`` command (one ``error: ...`` line, exit 2)."""
    from gpaco.engine.cli import run_cli

    run_cli(main, argv)
