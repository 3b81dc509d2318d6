"""Split-file datasets: ImageNet-LT, iNaturalist 2018, Places-LT, full ImageNet and the demo.

A split list has one sample per line, ``relative/path label`` separated by whitespace
(docs/method.md#data-and-augmentation), e.g. ``train/n01440764/n01440764_762.JPEG 0``.
The path is joined to a data root. Blank lines are skipped. The path may contain spaces:
the label is the last whitespace-separated token.

Lists are parsed strictly (every problem names the list file and line number) but no
image is touched at load time, so a 437k-line iNaturalist list loads in well under a
second. Unreadable images are reported when they are first read.
"""
from __future__ import annotations

import io
import logging
import multiprocessing
import os
import zlib
from typing import Callable, Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from gpaco.check_data import special_file_kind  # the checker's rule (standard library only)

__all__ = ["DataError", "special_file_kind", "read_split", "infer_num_classes", "class_counts", "SplitDataset", "to_rgb",
           "is_16_bit", "link_outside_root"]

logger = logging.getLogger(__name__)

_EXPECTED = 'expected "<relative/path> <integer label>"'

# What PIL raises for missing, empty, truncated or garbled files (UnidentifiedImageError
# and FileNotFoundError are OSErrors; some decoders raise the others).
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Labels at or above this are refused as implausible (a corrupt line, not a class index).
MAX_LABEL = 10_000_000


def png_problem(data: bytes) -> Optional[str]:
    """What is wrong with a PNG's chunk structure (bad CRC, truncated chunk, no IEND), or None.

    PIL checks the CRCs of the header chunks only; a flipped bit inside the image data
    can decode silently into wrong pixels, so every chunk is checked here (zlib.crc32,
    about 1 GB/s). Non-PNG data: None.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return None
    view = memoryview(data)
    pos, size = len(_PNG_SIGNATURE), len(data)
    while pos + 12 <= size:
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8]).decode("latin1")
        end = pos + 8 + length
        if end + 4 > size:
            return f"PNG chunk {kind!r} at byte {pos} is truncated"
        if zlib.crc32(view[pos + 4:end]) != int.from_bytes(view[end:end + 4], "big"):
            return f"bad CRC in PNG chunk {kind!r} at byte {pos}"
        if kind == "IEND":
            return None
        pos = end + 4
    return "PNG ends without an IEND chunk (truncated)"


#: PIL modes of 16-bit (and 32-bit integer) greyscale images; 16-bit PNGs open as "I" or "I;16".
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def is_16_bit(img: Image.Image) -> bool:
    return img.mode in _WIDE_GREY_MODES


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB. 16-bit greyscale is scaled by ``value >> 8`` (65535 -> 255;
    an 8-bit image stored as 16 bits, v * 257, comes back exactly): PIL's own
    ``convert("RGB")`` clips every value above 255 to white, which leaves about 2 grey
    levels of a 16-bit image."""
    if img.mode in _WIDE_GREY_MODES:
        wide = np.asarray(img).astype(np.int64)
        img = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), mode="L")
    return img.convert("RGB")


def link_outside_root(path: str, real_root: str) -> Optional[str]:
    """Where ``path`` really is when a symbolic link takes it out of ``real_root`` (the
    data root with its own links resolved), else None."""
    real = os.path.realpath(path)
    return None if real.startswith(os.path.join(real_root, "")) else real


def _new_counter():
    """A counter shared with forked DataLoader workers (None where shared memory is unavailable)."""
    try:
        return multiprocessing.Value("q", 0)
    except (OSError, ImportError):  # no /dev/shm, no semaphores
        return None


class DataError(ValueError):
    """A dataset file is missing, malformed or unreadable. The message names the file
    (and line) and says what was expected."""


def _parse_split(
    list_path: str | os.PathLike,
    data_root: str | os.PathLike,
    num_classes: Optional[int],
    allow_outside_root: bool,
) -> Tuple[List[Tuple[str, int]], List[int], int]:
    """:func:`read_split` plus the 1-based line number of every sample and a CRC-32 of the
    list's sample lines (stripped, so line endings and blank lines do not count)."""
    list_path = os.fspath(list_path)
    if not os.path.isfile(list_path):
        raise DataError(f"{list_path}: split list not found (expected a text file of '<relative/path> <label>' lines)")
    if num_classes is not None and num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    root = os.path.abspath(os.fspath(data_root))
    root_prefix = os.path.join(root, "")  # 'root/' so '/data2' is not inside '/data'
    samples: List[Tuple[str, int]] = []
    lines: List[int] = []
    kept: List[str] = []
    try:
        with open(list_path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise DataError(f"{list_path}: cannot read split list ({type(exc).__name__}: {exc})") from None
    try:
        text = blob.decode("utf-8-sig")  # -sig: tolerate a BOM
    except UnicodeDecodeError as exc:
        lineno = blob.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{list_path}:{lineno}: not UTF-8 text (byte {blob[exc.start]:#04x} at offset {exc.start}); "
                        f"a split list is a text file of '<relative/path> <label>' lines") from None
    if "\x00" in text:
        lineno = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(f"{list_path}:{lineno}: NUL byte in a split list (a binary file?)")
    for lineno, raw in enumerate(io.StringIO(text, newline=None), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        where = f"{list_path}:{lineno}"
        if len(parts) != 2:
            raise DataError(f"{where}: {_EXPECTED}, got {line!r}")
        rel, tok = parts
        # isdigit alone would accept '²'; int() alone would accept '1_0' and '+1'.
        digits = tok[1:] if tok.startswith("-") else tok
        if not (digits.isascii() and digits.isdigit()):
            raise DataError(f"{where}: {_EXPECTED}, got non-integer label {tok!r} in {line!r}")
        if len(digits) > 9:  # int() of a huge token is slow, then refused below anyway
            label = -MAX_LABEL if tok.startswith("-") else MAX_LABEL
            tok = tok[:12] + "..."
        else:
            label = int(tok)
        if label < 0:
            raise DataError(f"{where}: labels must be >= 0, got {tok if label == -MAX_LABEL else label}")
        if label >= MAX_LABEL:
            raise DataError(f"{where}: label {tok} is implausibly large (limit {MAX_LABEL - 1}): a corrupt line?")
        if num_classes is not None and label >= num_classes:
            raise DataError(
                f"{where}: label {label} out of range for num_classes={num_classes} (expected 0..{num_classes - 1})"
            )
        if os.path.isabs(rel):
            if not allow_outside_root:
                raise DataError(
                    f"{where}: absolute path {rel!r} refused; paths are relative to the data root {root} "
                    "(pass --allow-outside-root to accept it)"
                )
            path = os.path.normpath(rel)
        else:
            path = os.path.join(root, rel)
            if ".." in rel:  # only these can leave the root; normpath is the slow part
                path = os.path.normpath(path)
                if not allow_outside_root and not path.startswith(root_prefix):
                    raise DataError(
                        f"{where}: path {rel!r} leaves the data root {root} "
                        "(pass --allow-outside-root to accept it)"
                    )
        samples.append((path, label))
        lines.append(lineno)
        kept.append(line)
    return samples, lines, zlib.crc32("\n".join(kept).encode())


def read_split(
    list_path: str | os.PathLike,
    data_root: str | os.PathLike,
    *,
    num_classes: Optional[int] = None,
    allow_outside_root: bool = False,
) -> List[Tuple[str, int]]:
    """Parse a split list into ``[(absolute image path, label), ...]`` in file order.

    Args:
        list_path: the ``relative/path label`` text file.
        data_root: directory the relative paths are joined to.
        num_classes: when given, labels must be in ``0..num_classes-1``.
        allow_outside_root: accept absolute paths and ``..`` paths that leave ``data_root``.
    Raises:
        DataError: missing list, malformed line, bad label, path outside the root.
            Images are not checked here.
    """
    return _parse_split(list_path, data_root, num_classes, allow_outside_root)[0]


def infer_num_classes(samples: Iterable[Tuple[str, int]]) -> int:
    """``max label + 1`` (0 for an empty list)."""
    return max((label for _, label in samples), default=-1) + 1


def class_counts(samples: Iterable[Tuple[str, int]], num_classes: int) -> List[int]:
    """Number of samples per class, ``[num_classes]``; these set the log prior."""
    counts = [0] * num_classes
    for _, label in samples:
        if not 0 <= label < num_classes:
            raise ValueError(f"label {label} out of range for num_classes={num_classes}")
        counts[label] += 1
    return counts


class SplitDataset(Dataset):
    """Images listed in a split file; ``dataset[i] -> (transform(rgb_pil_image), label)``.

    Attributes:
        samples: ``[(absolute path, label)]`` in file order.
        targets: ``[label]``, same order.
        num_classes: as given, else inferred from the labels (pass the train split's
            value for val/test lists, which may lack the last classes).
        class_counts: ``[num_classes]`` samples per class (the train prior).
        list_crc: CRC-32 of the list's sample lines (ranks compare it, gpaco.data.build).
        num_skipped: images skipped so far with ``skip_bad_images``, counted in shared
            memory so that the skips of forked DataLoader workers add up in the main
            process (per rank under DDP; spawned workers count on their own copy).

    With ``skip_bad_images=False`` (default) an unreadable, missing or truncated image
    raises :class:`DataError` naming the image and its list line. With ``True`` it is
    logged and the next readable sample (wrapping around) is returned instead, which
    keeps batch sizes fixed but duplicates that sample once.

    An image whose symbolic links lead out of the data root is refused when it is read
    (:class:`DataError` naming the list line and the link's target) unless
    ``follow_symlinks`` or ``allow_outside_root``. 16-bit greyscale images are scaled to
    8 bits (:func:`to_rgb`).
    """

    def __init__(
        self,
        list_path: str | os.PathLike,
        data_root: str | os.PathLike,
        transform: Optional[Callable] = None,
        *,
        num_classes: Optional[int] = None,
        allow_outside_root: bool = False,
        skip_bad_images: bool = False,
        follow_symlinks: bool = False,
    ) -> None:
        self.list_path = os.fspath(list_path)
        self.data_root = os.fspath(data_root)
        # None: links may go anywhere; else the resolved root every image must stay inside
        self._real_root = None if follow_symlinks or allow_outside_root else os.path.realpath(self.data_root)
        self.samples, self._lines, self.list_crc = _parse_split(list_path, data_root, num_classes,
                                                                allow_outside_root)
        if not self.samples:
            raise DataError(f"{self.list_path}: split list has no samples")
        self.targets = [label for _, label in self.samples]
        self.num_classes = num_classes if num_classes is not None else infer_num_classes(self.samples)
        self.class_counts = class_counts(self.samples, self.num_classes)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self._skips = _new_counter()
        self._local_skips = 0

    def __len__(self) -> int:
        return len(self.samples)

    def where(self, index: int) -> str:
        """Where sample ``index`` comes from, for messages: ``LIST:LINE``."""
        return f"{self.list_path}:{self._lines[index]}"

    @property
    def num_skipped(self) -> int:
        return self._skips.value if self._skips is not None else self._local_skips

    def _count_skip(self) -> int:
        if self._skips is None:
            self._local_skips += 1
            return self._local_skips
        with self._skips.get_lock():
            self._skips.value += 1
            return self._skips.value

    def __getstate__(self) -> dict:
        # A shared counter only crosses fork (inheritance); a pickled copy (spawn workers)
        # counts on its own.
        state = dict(self.__dict__)
        state["_local_skips"] = self.num_skipped
        state["_skips"] = None
        return state

    def load_image(self, index: int) -> Image.Image:
        """Decode sample ``index`` as an RGB PIL image; :class:`DataError` if unreadable."""
        path = self.samples[index][0]
        # An eval transform built with reduced_decode (--reduced-jpeg-decode) exposes
        # draft_size (its Resize target). For JPEGs, draft() lets libjpeg decode at 1/2, 1/4
        # or 1/8 scale while keeping both sides >= draft_size, so the following Resize only
        # sees a smaller input: several times faster on large images, but the pixels differ
        # from the standard full decode (another downsampling filter). By default no
        # transform exposes one: every image is decoded in full.
        draft = getattr(self.transform, "draft_size", None)
        if self._real_root is not None:
            target = link_outside_root(path, self._real_root)
            if target is not None:
                raise DataError(f"{self.where(index)}: {path} is a symbolic link to {target}, "
                                f"outside the data root {self._real_root} (--follow-symlinks accepts it)")
        try:  # stat before open: opening a FIFO would block (see special_file_kind)
            kind = special_file_kind(os.stat(path).st_mode)
        except OSError:
            kind = None  # missing or unreadable: open() below reports it
        if kind is not None:
            raise DataError(f"{self.where(index)}: {path} is not a regular file ({kind}); "
                            f"a split list names image files")
        try:
            with open(path, "rb") as f:
                data = f.read()
            if not data:
                raise ValueError("empty file (0 bytes)")
            problem = png_problem(data)
            if problem:
                raise ValueError(problem)
            with Image.open(io.BytesIO(data)) as img:
                if draft and img.format == "JPEG":
                    img.draft("RGB", (draft, draft))
                return to_rgb(img)  # convert() forces the full decode inside the try
        except _IMAGE_ERRORS as exc:
            raise DataError(
                f"{path}: cannot read image ({type(exc).__name__}: {exc}); "
                f"listed at {self.where(index)}"
            ) from exc

    def __getitem__(self, index: int):
        label = self.samples[index][1]
        try:
            img = self.load_image(index)
        except DataError as err:
            if not self.skip_bad_images:
                raise
            img, label = self._next_readable(index, err)
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def _next_readable(self, index: int, first_error: DataError) -> Tuple[Image.Image, int]:
        n = len(self.samples)
        err = first_error
        for step in range(1, n + 1):
            count = self._count_skip()
            logger.warning("skipping unreadable image (%d skipped so far): %s", count, err)
            j = (index + step) % n
            try:
                return self.load_image(j), self.samples[j][1]
            except DataError as e:
                err = e
        raise DataError(f"{self.list_path}: no readable image in the whole split (last error: {err})")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(list={self.list_path!r}, root={self.data_root!r}, "
            f"samples={len(self)}, num_classes={self.num_classes})"
        )
