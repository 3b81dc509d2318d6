#!/usr/bin/env python
"""Check split lists against their data root before a long run finds the problem for you.

    python tools/check_data.py --data-root data/imagenet --list data/imagenet/ImageNet_LT_train.txt
    python tools/check_data.py --data-root ROOT --list train.txt --list val.txt --list test.txt --num-classes 10

A split list has one sample per line, ``relative/path label`` (the label is the last
whitespace-separated token, blank lines are skipped), exactly what ``tools/train.py`` and
``tools/eval.py`` read (``gpaco.data.splits.read_split``). Every line is checked and every
problem is reported with its line number (``LIST:LINE: message``), not just the first:

errors (exit status 1)
    malformed line, non-integer or negative label, label >= the class count, path that
    leaves the data root (absolute or ``..``; ``--allow-outside-root`` accepts them), an
    image whose symbolic links lead out of the data root (``--follow-symlinks`` accepts
    them), missing image file, a path that is not a regular file (a FIFO, device or socket), unreadable image (only with ``--verify-images``), a line that
    repeats an earlier one (or names the same image with another label), an empty list,
    classes with no sample when the class count is known (``--num-classes``, or the
    standard count of a list with a standard file name).
warnings (exit status 0 unless ``--strict``)
    a list with a standard file name (``ImageNet_LT_train.txt``, ...) whose line count
    differs from the standard split's (a subset or a cleaned copy can be legitimate; a
    truncated download is not), labels ``0..max`` with empty classes when no class count
    is known, images shared by two of the lists given, and 16-bit greyscale images (with
    ``--verify-images``; the loaders scale them to 8 bits, ``value >> 8``).

Exit status: 0 valid, 1 problems found, 2 bad command line. Only the standard library is
needed (Pillow for ``--verify-images``), so it runs before the environment is set up.
"""
from __future__ import annotations

import argparse
import io
import os
import stat
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

# Standard split files: basename -> (samples, classes). Sources: docs/method.md#data-and-augmentation,
# the ImageNet-LT / Places-LT lists of OLTR (Liu et al. 2019) and the iNaturalist 2018 lists of the
# LT literature.
STANDARD_SPLITS: Dict[str, Tuple[int, int]] = {
    "ImageNet_LT_train.txt": (115_846, 1000),
    "ImageNet_LT_val.txt": (20_000, 1000),
    "ImageNet_LT_test.txt": (50_000, 1000),
    "iNaturalist18_train.txt": (437_513, 8142),
    "iNaturalist18_val.txt": (24_426, 8142),
    "Places_LT_train.txt": (62_500, 365),
    "Places_LT_val.txt": (7_300, 365),
    "Places_LT_test.txt": (36_500, 365),
}

# Many / medium / few thresholds on training counts (docs/method.md#metrics): > 100, 20..100, < 20.
MANY_SHOT, FEW_SHOT = 100, 20

_EXPECTED = "expected '<relative/path> <integer label>'"


@dataclass
class Problem:
    """One finding. ``line`` is 1-based (None for whole-list findings)."""

    kind: str
    message: str
    line: Optional[int] = None

    def format(self, list_path: str) -> str:
        where = f"{list_path}:{self.line}" if self.line is not None else list_path
        return f"{where}: {self.message}"


@dataclass
class ListReport:
    """What :func:`check_list` found in one split list."""

    list_path: str
    num_lines: int = 0  # non-blank lines
    num_samples: int = 0  # lines that parsed, inside the class range and the root, not duplicates
    num_classes: Optional[int] = None  # the class count checked against (None: unknown)
    class_source: str = ""  # "--num-classes", "standard split name", "" (inferred)
    counts: Dict[int, int] = field(default_factory=dict)  # label -> samples
    paths: Dict[str, int] = field(default_factory=dict)  # normalised path -> first line
    errors: List[Problem] = field(default_factory=list)
    warnings: List[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _parse_line(line: str) -> Tuple[Optional[str], Optional[int], Optional[Problem]]:
    """(relative path, label, None) or (None, None, the problem; its line is set by the caller)."""
    parts = line.rsplit(None, 1)
    if len(parts) != 2:
        return None, None, Problem("format", f"{_EXPECTED}, got {line!r}")
    rel, tok = parts
    digits = tok[1:] if tok.startswith("-") else tok
    # Same rule as gpaco.data.splits: ASCII digits only ('²', '1_0' and '+1' are refused).
    if not (digits.isascii() and digits.isdigit()):
        return None, None, Problem("label", f"{_EXPECTED}, got non-integer label {tok!r} in {line!r}")
    label = int(tok)
    if label < 0:
        return None, None, Problem("label", f"labels must be >= 0, got {label}")
    return rel, label, None


def special_file_kind(mode: int) -> Optional[str]:
    """What a non-regular file is (``os.stat().st_mode``), or None for a regular file.
    Opening a FIFO blocks until a writer appears (forever, and SIGTERM cannot interrupt
    it), and a device can stream without end: only regular files are read as images.
    The one rule for the checker, the split reader (gpaco.data.splits) and training."""
    if stat.S_ISREG(mode):
        return None
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return kind
    return "another special file"


def _file_kind(path: str) -> Optional[str]:
    """None for a regular file, "missing", or what special file it is. Only stat: opening a
    FIFO would block the check (and training) forever."""
    try:
        return special_file_kind(os.stat(path).st_mode)
    except OSError:
        return "missing"


def _exists_chunk(paths: Sequence[str]) -> List[Optional[str]]:
    return [_file_kind(p) for p in paths]


def _realpath_chunk(paths: Sequence[str]) -> List[str]:
    return [os.path.realpath(p) for p in paths]


# 16-bit greyscale PIL modes (gpaco.data.splits.to_rgb scales them to 8 bits)
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def _readable_chunk(paths: Sequence[str]) -> List[Tuple[Optional[str], str]]:
    """(why the image is unreadable or None, its PIL mode) per path."""
    from PIL import Image

    out: List[Tuple[Optional[str], str]] = []
    for p in paths:
        try:
            with Image.open(p) as img:
                mode = img.mode
                img.verify()
            out.append((None, mode))
        except Exception as exc:  # PIL raises many types for bad files
            out.append((f"{type(exc).__name__}: {exc}", ""))
    return out


def _parallel(fn, items: List[str], jobs: int, chunk: int = 512) -> list:
    """``fn`` over chunks of ``items`` on ``jobs`` threads (file-system calls release the GIL;
    on network file systems this is several times faster than a loop)."""
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    if jobs <= 1 or len(chunks) <= 1:
        return [r for c in chunks for r in fn(c)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [r for part in pool.map(fn, chunks) for r in part]


def _label_ranges(labels: Iterable[int], limit: int = 20) -> str:
    labels = sorted(labels)
    shown = ", ".join(str(c) for c in labels[:limit])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > limit else "")


def check_list(
    list_path: str,
    data_root: str,
    *,
    num_classes: Optional[int] = None,
    allow_outside_root: bool = False,
    check_files: bool = True,
    verify_images: bool = False,
    jobs: int = 8,
    follow_symlinks: bool = False,
) -> ListReport:
    """Check one split list against ``data_root``; never raises for data problems.

    Args:
        list_path: the ``relative/path label`` text file.
        data_root: directory the relative paths are joined to.
        num_classes: the class count; labels must be in ``0..num_classes-1`` and every
            class must have a sample. Default: the standard count if the list has a
            standard file name (:data:`STANDARD_SPLITS`), else unknown.
        allow_outside_root: accept absolute paths and ``..`` paths leaving the root.
        check_files: check that every listed file exists.
        verify_images: also open every image with Pillow (slower).
        jobs: threads for the file checks.
        follow_symlinks: accept files whose symbolic links lead out of the root.
    """
    report = ListReport(list_path=list_path)
    base = os.path.basename(list_path)
    standard = STANDARD_SPLITS.get(base)
    if num_classes is not None:
        report.num_classes, report.class_source = num_classes, "--num-classes"
    elif standard is not None:
        report.num_classes, report.class_source = standard[1], f"the standard {base}"
    if not os.path.isfile(list_path):
        report.errors.append(Problem("missing-list", f"split list not found ({_EXPECTED} lines)"))
        return report
    root = os.path.abspath(data_root)
    to_check = _read_list(report, root, allow_outside_root)
    if to_check is None:
        return report
    if check_files and to_check:
        _check_files(report, to_check, root, allow_outside_root=allow_outside_root, follow_symlinks=follow_symlinks,
                     verify_images=verify_images, jobs=jobs)
    _check_totals(report, standard)
    report.errors.sort(key=lambda p: (p.line is None, p.line or 0))
    return report


def _resolve(rel: str, root: str, allow_outside_root: bool) -> Tuple[str, Optional[Problem]]:
    """The normalised path of a listed ``rel`` and, if it is refused, why (line set by the caller)."""
    if os.path.isabs(rel):
        path = os.path.normpath(rel)
        if not allow_outside_root:
            return path, Problem("outside-root", f"absolute path {rel!r} refused: paths are relative to the data "
                                                 f"root (--allow-outside-root accepts it)")
        return path, None
    path = os.path.normpath(os.path.join(root, rel))
    if not allow_outside_root and not path.startswith(os.path.join(root, "")):
        return path, Problem("outside-root", f"path {rel!r} leaves the data root {root} "
                                             f"(--allow-outside-root accepts it)")
    return path, None


def _duplicate(line: str, rel: str, label: int, first_line: int, first_label: int) -> Problem:
    if first_label == label:
        return Problem("duplicate", f"duplicate of line {first_line} ({line!r})")
    return Problem("duplicate", f"same image as line {first_line} with another label "
                                f"({label} here, {first_label} there): {rel!r}")


def _read_list(report: ListReport, root: str, allow_outside_root: bool) -> Optional[List[Tuple[str, str, int]]]:
    """Check every line of ``report.list_path`` (format, label, root, duplicates), counting the
    good ones into ``report``; the (absolute path, relative path, line) of each image to look
    at, or None if the list cannot be read."""
    to_check: List[Tuple[str, str, int]] = []
    labels_by_path: Dict[str, Tuple[int, int]] = {}  # normalised path -> (first line, label)
    try:
        with open(report.list_path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        report.errors.append(Problem("missing-list", f"cannot read the split list ({exc})"))
        return None
    # Decoded whole, as gpaco.data.splits does: a UTF-16 or binary file is one finding, not a traceback.
    try:
        text = blob.decode("utf-8-sig")  # -sig: tolerate a BOM
    except UnicodeDecodeError as exc:
        report.errors.append(Problem(
            "format", f"not UTF-8 text (byte {blob[exc.start]:#04x} at offset {exc.start}; UTF-16?): a split list "
                      f"is a text file of '<relative/path> <label>' lines", blob.count(b"\n", 0, exc.start) + 1))
        return None
    if "\x00" in text:  # UTF-16 without a BOM decodes as UTF-8 with a NUL after every ASCII character
        report.errors.append(Problem("format", "NUL byte in a split list (UTF-16 or a binary file?)",
                                     text.count("\n", 0, text.index("\x00")) + 1))
        return None
    with io.StringIO(text, newline=None) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            report.num_lines += 1
            rel, label, err = _parse_line(line)
            if err is None and report.num_classes is not None and label >= report.num_classes:
                err = Problem("label", f"label {label} out of range for {report.num_classes} classes "
                                       f"(0..{report.num_classes - 1}, from {report.class_source})")
            if err is None:
                path, err = _resolve(rel, root, allow_outside_root)
            if err is None and path in labels_by_path:
                err = _duplicate(line, rel, label, *labels_by_path[path])
            if err is not None:
                err.line = lineno
                report.errors.append(err)
                continue
            labels_by_path[path] = (lineno, label)
            report.counts[label] = report.counts.get(label, 0) + 1
            report.num_samples += 1
            to_check.append((path, rel, lineno))
    report.paths = {p: v[0] for p, v in labels_by_path.items()}
    return to_check


def _check_files(report: ListReport, to_check: List[Tuple[str, str, int]], root: str, *, allow_outside_root: bool,
                 follow_symlinks: bool, verify_images: bool, jobs: int) -> None:
    """Missing files, symbolic links out of the root and (``verify_images``) unreadable or
    16-bit images, into ``report``."""
    if not os.path.isdir(root):
        report.errors.append(Problem("missing-root", f"data root {root} is not a directory"))
        return
    kinds = _parallel(_exists_chunk, [p for p, _, _ in to_check], jobs)
    for (path, rel, lineno), kind in zip(to_check, kinds):
        if kind == "missing":
            report.errors.append(Problem("missing", f"file not found: {rel} ({path})", lineno))
        elif kind is not None:
            report.errors.append(Problem("special", f"{path} is not a regular file ({kind}); a split list "
                                                    f"names image files", lineno))
    present = [t for t, kind in zip(to_check, kinds) if kind is None]
    if not (allow_outside_root or follow_symlinks) and present:
        real_root = os.path.join(os.path.realpath(root), "")
        reals = _parallel(_realpath_chunk, [p for p, _, _ in present], jobs)
        for (path, rel, lineno), real in zip(present, reals):
            if not real.startswith(real_root):
                report.errors.append(Problem(
                    "symlink", f"{rel} is a symbolic link to {real}, outside the data root "
                               f"(--follow-symlinks accepts it)", lineno))
    if verify_images:
        _verify_images(report, present, jobs)


def _verify_images(report: ListReport, present: List[Tuple[str, str, int]], jobs: int) -> None:
    bad = _parallel(_readable_chunk, [p for p, _, _ in present], jobs)
    wide = []
    for (path, rel, lineno), (why, mode) in zip(present, bad):
        if why is not None:
            report.errors.append(Problem("unreadable", f"cannot read image {rel}: {why}", lineno))
        elif mode in _WIDE_GREY_MODES:
            wide.append((lineno, rel, mode))
    if wide:
        lineno, rel, mode = wide[0]
        report.warnings.append(Problem(
            "16-bit", f"{len(wide):,} 16-bit greyscale images (e.g. line {lineno}: {rel}, PIL mode "
                      f"{mode}): tools/train.py and tools/eval.py scale them to 8 bits (value >> 8)"))


def _check_totals(report: ListReport, standard: Optional[Tuple[int, int]]) -> None:
    """Whole-list findings: no sample at all, classes without a sample, a standard split's
    line count."""
    if report.num_samples == 0 and not report.errors:
        report.errors.append(Problem("empty", "split list has no samples"))
    if report.num_samples:
        if report.num_classes is not None:
            absent = set(range(report.num_classes)) - set(report.counts)
            if absent:
                report.errors.append(Problem(
                    "classes", f"{len(absent)} of {report.num_classes} classes (from {report.class_source}) have "
                               f"no sample: {_label_ranges(absent)}"))
        else:
            top = max(report.counts) + 1
            absent = set(range(top)) - set(report.counts)
            if absent:
                report.warnings.append(Problem(
                    "classes", f"labels go up to {top - 1} but {len(absent)} classes have no sample: "
                               f"{_label_ranges(absent)} (pass --num-classes to make this an error)"))
    if standard is not None and report.num_lines != standard[0]:
        base = os.path.basename(report.list_path)
        report.warnings.append(Problem(
            "count", f"{report.num_lines:,} sample lines, but the standard {base} has {standard[0]:,} "
                     f"({standard[1]} classes): a subset, a cleaned copy or a truncated file?"))


def cross_list_warnings(reports: Sequence[ListReport]) -> List[str]:
    """Images that appear in more than one of the lists (e.g. a train/val leak)."""
    out = []
    for i, a in enumerate(reports):
        for b in reports[i + 1:]:
            if os.path.abspath(a.list_path) == os.path.abspath(b.list_path):
                continue
            shared = a.paths.keys() & b.paths.keys()
            if shared:
                example = min(shared, key=lambda p: b.paths[p])
                out.append(f"warning: {len(shared):,} images of {b.list_path} are also in {a.list_path} "
                           f"(e.g. {b.list_path}:{b.paths[example]} = {a.list_path}:{a.paths[example]})")
    return out


def summary_line(r: ListReport) -> str:
    if not r.counts:
        return f"{r.list_path}: no valid samples"
    per = sorted(r.counts.values())
    n_cls = r.num_classes if r.num_classes is not None else max(r.counts) + 1
    text = (f"{r.list_path}: {r.num_samples:,} samples, {len(r.counts)} of {n_cls} classes present, "
            f"{per[0]}..{per[-1]} per class")
    if "train" in os.path.basename(r.list_path).lower():
        full = [r.counts.get(c, 0) for c in range(n_cls)]
        many = sum(n > MANY_SHOT for n in full)
        few = sum(n < FEW_SHOT for n in full)
        text += (f", imbalance {per[-1] / max(per[0], 1):.1f}; as a train list: many {many} / medium "
                 f"{n_cls - many - few} / few {few} classes (>{MANY_SHOT} / {FEW_SHOT}..{MANY_SHOT} / <{FEW_SHOT})")
    return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/check_data.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", required=True, help="folder the lists' paths are relative to")
    p.add_argument("--list", dest="lists", action="append", required=True, metavar="FILE",
                   help="split list to check (repeat for several: shared images are reported)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="class count: labels must be 0..N-1 and every class must have a sample "
                        "(default: the standard count for a standard file name, else unchecked)")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 1)")
    p.add_argument("--verify-images", action="store_true", help="also open every image with Pillow (slower)")
    p.add_argument("--no-files", action="store_true", help="check the list format only, not the files")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept absolute paths, '..' paths and symbolic links that leave --data-root")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="accept files whose symbolic links lead out of --data-root")
    p.add_argument("--max-problems", type=int, default=200,
                   help="problems printed per list (0: all); the totals are always printed")
    p.add_argument("--jobs", "-j", type=int, default=8, help="threads for the file checks")
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error instead of the one 'error: ...' line")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_classes is not None and args.num_classes <= 0:
        print(f"error: --num-classes must be positive, got {args.num_classes}", file=sys.stderr)
        return 2
    reports = []
    n_err = n_warn = 0
    for list_path in args.lists:
        r = check_list(list_path, args.data_root, num_classes=args.num_classes,
                       allow_outside_root=args.allow_outside_root, check_files=not args.no_files,
                       verify_images=args.verify_images, jobs=args.jobs, follow_symlinks=args.follow_symlinks)
        reports.append(r)
        print(summary_line(r))
        shown = r.errors if args.max_problems <= 0 else r.errors[:args.max_problems]
        for prob in shown:
            print(f"  error: {prob.format(r.list_path)}")
        if len(shown) < len(r.errors):
            print(f"  ... and {len(r.errors) - len(shown)} more errors (--max-problems 0 prints all)")
        for prob in r.warnings:
            print(f"  warning: {prob.format(r.list_path)}")
        if r.errors:
            kinds = Counter(p.kind for p in r.errors)
            print(f"  {_plural(len(r.errors), 'error')}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
        n_err += len(r.errors)
        n_warn += len(r.warnings)
    for w in cross_list_warnings(reports):
        print(w)
        n_warn += 1
    failed = n_err > 0 or (args.strict and n_warn > 0)
    verdict = "INVALID" if failed else "OK"
    print(f"{verdict}: {_plural(len(reports), 'list')} under {args.data_root}, {_plural(n_err, 'error')}, "
          f"{_plural(n_warn, 'warning')}"
          + (" (--strict: warnings fail)" if args.strict and n_warn and not n_err else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
