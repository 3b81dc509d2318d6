"""Label-free training images from webdataset tar shards (CC3M's ``cc3m-train-{000000..000575}.tar``).

A shard is a tar file of samples, each a group of files sharing a key (``000123456.jpg``,
``000123456.txt``...). The reader takes the image of each sample (``jpg``, ``jpeg``, ``png`` or
``webp``; captions and other files are not read) and yields ``(image, NO_LABEL)``: the
label-free distillation runs learn from the teacher's predictions, not from labels. Reading and
grouping the tar files is the ``webdataset`` package's (an optional extra:
``pip install 'gpaco[webdataset]'``).

The split (the one the original CC3M driver makes by hand, not webdataset's ``split_by_node`` /
``split_by_worker``, which read the rank from the environment):

* **processes**: the sorted shard list is dealt out, rank ``r`` of ``W`` reading shards
  ``r, r + W, ...``; no image is read by two processes, every image by one;
* **loader workers**: a process's shards are dealt out again to its ``S`` streams (one per
  DataLoader worker, at most one per shard), stream ``s`` reading ``s, s + S, ...`` of them.

An epoch is a fixed number of batches per process (``epoch_iters``; the original's CC3M epoch is
5,501 iterations of 64 images per GPU): the streams read their shards over and over until the
epoch has its batches, each pass over a stream's shards in a new order and through a shuffle
buffer of ``shuffle_buffer`` raw samples (the original's 10,000) that empties at the end of the
pass, so that a pass holds every image of the stream once. Batch ``i`` of an epoch is made by
stream ``i mod S`` (the order in which a DataLoader collects its workers' batches).

Everything random derives from (seed, epoch, rank, stream): the shard order of each pass, the
shuffle buffer, and each image's augmentation, drawn from its own seed (its place in the epoch,
:func:`~gpaco.data.build.sample_seed`, as :class:`~gpaco.data.build.EpochSeededDataset` seeds the
split datasets). An epoch is therefore the same batches every time it is run with the same
number of processes and workers, and :meth:`WebDatasetLoader.set_epoch` with ``start_batch``
re-creates its remaining batches exactly (a mid-epoch resume; the skipped samples are read but
not decoded). With another worker count the streams hold other shards and the epoch differs.

Entry point: :func:`build_webdataset_train` (the split datasets' ``--aug`` transform) or
:class:`WebDatasetImages` (any transform), then :meth:`WebDatasetImages.loader`. tools/train.py
reads shards with ``--dataset webdataset --train-list PATTERN --epoch-iters N``
(:func:`gpaco.data.build.build_train_dataset`, :func:`gpaco.data.build.train_loader`).
"""
from __future__ import annotations

import glob
import io
import os
import random
from itertools import count, islice
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .build import sample_seed
from .splits import DataError
from .transforms import NORMALIZATION, build_train_transform
from .workers import ignore_stop_signals

__all__ = ["NO_LABEL", "IMAGE_EXTENSIONS", "INSTALL_HINT", "require_webdataset", "expand_shards",
           "WebDatasetImages", "WebDatasetLoader", "build_webdataset_train"]

#: the label of every image (the shards hold none); the teacher's prediction takes its place
NO_LABEL = -1
#: a sample's image is its first file with one of these extensions
IMAGE_EXTENSIONS: Tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
INSTALL_HINT = "pip install 'gpaco[webdataset]'"
#: the original's shuffle buffer (samples, before decoding)
DEFAULT_SHUFFLE_BUFFER = 10_000

_RANK_STRIDE = 1 << 40  # sample seeds: rank r's epoch uses indices r * 2^40 + position


def require_webdataset():
    """The ``webdataset`` module, or an ImportError saying how to install it."""
    try:
        import webdataset
    except ImportError:
        raise ImportError(f"reading webdataset tar shards needs the webdataset package: {INSTALL_HINT}") from None
    return webdataset


def expand_shards(pattern: str, root: Optional[str] = None) -> List[str]:
    """The sorted shard files ``pattern`` names: braces expanded (``cc3m-train-{000000..000575}.tar``),
    then shell wildcards (``cc3m-train-*.tar``); a relative pattern is under ``root`` when given.

    Raises :class:`~gpaco.data.splits.DataError` when nothing matches, or when files the braces
    name are missing (a partial download would silently train on less)."""
    require_webdataset()
    from braceexpand import braceexpand  # a dependency of webdataset

    full = pattern if root is None or os.path.isabs(pattern) else os.path.join(root, pattern)
    names = list(braceexpand(full))
    found, missing = [], []
    for name in names:
        if any(c in name for c in "*?["):
            found += [m for m in glob.glob(name) if os.path.isfile(m)]
        elif os.path.isfile(name):
            found.append(name)
        else:
            missing.append(name)
    if not found:
        raise DataError(f"no shard file matches {full} (expected tar files such as cc3m-train-000000.tar; a "
                        f"pattern takes braces {{000000..000575}} and wildcards *)")
    if missing:
        raise DataError(f"{full}: {len(missing)} of {len(names)} shard files are missing, e.g. {missing[0]}; "
                        f"download them, or name the shards there are with a wildcard")
    return sorted(set(found))


def _seed_rngs(seed: int) -> None:
    """Python's, NumPy's and torch's CPU generators from one 63-bit seed (as EpochSeededDataset)."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.default_generator.manual_seed(seed)


class WebDatasetImages:
    """The images of a set of tar shards and the transform they get: what a training run reads.

    Args:
        shards: the shard files (:func:`expand_shards`); dealt out to processes in sorted order.
        transform: PIL RGB image -> tensor (a split dataset's training transform).
        epoch_iters: batches per process per epoch.
        num_classes: the class count of the teacher that labels the images (informative).
        shuffle_buffer: samples held per stream to shuffle (raw bytes, before decoding).
        name: what the shards are called in messages (the pattern; default: the first shard).
    """

    def __init__(self, shards: Sequence[str], transform: Callable, *, epoch_iters: int,
                 num_classes: Optional[int] = None, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 name: Optional[str] = None) -> None:
        require_webdataset()
        if not shards:
            raise DataError("no shard files given")
        if epoch_iters < 1:
            raise ValueError(f"epoch_iters must be >= 1 (batches per process per epoch), got {epoch_iters}")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.shards = sorted(shards)
        self.transform = transform
        self.epoch_iters = int(epoch_iters)
        self.num_classes = num_classes
        self.shuffle_buffer = int(shuffle_buffer)
        self.name = name or self.shards[0]

    def rank_shards(self, rank: int, world_size: int) -> List[str]:
        """The shards process ``rank`` of ``world_size`` reads (disjoint, together all of them)."""
        if len(self.shards) < world_size:
            raise DataError(f"{len(self.shards)} shard file(s) for {world_size} processes: every process reads "
                            f"whole shards, so there must be at least one per process")
        return self.shards[rank::world_size]

    def loader(self, *, batch_size: int, workers: int, rank: int = 0, world_size: int = 1, seed: int = 0,
               pin_memory: bool = False) -> "WebDatasetLoader":
        """This process's training loader: ``epoch_iters`` batches of ``batch_size``
        ``(images [B, ...], labels [B] = NO_LABEL)`` per epoch, read by ``workers`` DataLoader
        workers (at most one per shard of this process; 0: in this process)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        shards = self.rank_shards(rank, world_size)
        streams = _EpochStreams(self, shards, batch_size=batch_size, streams=_stream_count(workers, shards),
                                rank=rank, seed=seed)
        return WebDatasetLoader(streams, workers=workers, pin_memory=pin_memory)


def _stream_count(workers: int, shards: Sequence[str]) -> int:
    """Streams of a process: one per loader worker, at most one per shard (0 workers: one)."""
    return max(1, min(workers, len(shards)))


class _EpochStreams(IterableDataset):
    """One process's epoch as ``streams`` sample streams; a DataLoader worker (or the process
    itself) plays one stream and yields its batches' samples, in order."""

    def __init__(self, images: WebDatasetImages, shards: List[str], *, batch_size: int, streams: int, rank: int,
                 seed: int) -> None:
        self.images, self.shards = images, shards
        self.batch_size, self.streams, self.rank, self.seed = batch_size, streams, rank, seed
        self.epoch, self.start = 0, 0

    def _stream_seed(self, stream: int, *what: int) -> int:
        s = sample_seed(self.seed, self.epoch, self.rank)
        for x in (stream, *what):
            s = sample_seed(s, x, -1)
        return s

    def _raw_samples(self, stream: int) -> Iterator[dict]:
        """The stream's samples, undecoded: its shards pass after pass, each pass its shards in a
        new order and its samples through the shuffle buffer, which empties at the end of the
        pass (a pass holds every image of the stream once)."""
        wds = require_webdataset()
        mine = self.shards[stream::self.streams]
        buffer = self.images.shuffle_buffer

        def is_image(name: str) -> bool:  # captions and metadata are not even read
            return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS

        for p in count():
            order = list(mine)
            random.Random(self._stream_seed(stream, 0, p)).shuffle(order)
            samples = wds.tarfile_to_samples(select_files=is_image)({"url": url} for url in order)
            read = 0
            for sample in wds.shuffle(buffer, buffer, rng=random.Random(self._stream_seed(stream, 1, p)))(samples):
                read += 1
                yield sample
            if not read:  # reading on would never end
                raise DataError(f"{', '.join(order[:3])}{' ...' if len(order) > 3 else ''}: no image "
                                f"({'/'.join(IMAGE_EXTENSIONS)}) in these shard files")

    def _decode(self, sample: dict, index: int):
        # the file name after the key: "jpg", "JPG", "img.jpg"...; every sample has one (only images are read)
        ext = next(k for e in IMAGE_EXTENSIONS for k in sample if k.rsplit(".", 1)[-1].lower() == e)
        try:
            with Image.open(io.BytesIO(sample[ext])) as img:
                img = img.convert("RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"{sample.get('__url__')}: cannot decode {sample.get('__key__')}.{ext} "
                            f"({type(e).__name__}: {e})") from None
        seed = sample_seed(self.seed, self.epoch, self.rank * _RANK_STRIDE + index)
        if get_worker_info() is not None:  # a worker's generators serve only this loader
            _seed_rngs(seed)
            return self.images.transform(img)
        # in the main process the model's random stream is left as it was
        states = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
        try:
            _seed_rngs(seed)
            return self.images.transform(img)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.default_generator.set_state(states[2])

    def __iter__(self) -> Iterator[Tuple[object, int]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None and info.num_workers != self.streams:
            raise RuntimeError(f"the loader has {info.num_workers} workers for {self.streams} streams")
        stream = (self.start + worker) % self.streams  # the DataLoader asks worker k for the start+k-th batch
        # this stream's batches of the epoch, from the first not yet done
        batches = range(stream, self.images.epoch_iters, self.streams)
        done = sum(1 for b in batches if b < self.start)
        raw = islice(self._raw_samples(stream), done * self.batch_size, None)  # skipped: read, not decoded
        for b in batches[done:]:
            for j, sample in enumerate(islice(raw, self.batch_size)):
                yield self._decode(sample, b * self.batch_size + j), NO_LABEL


class WebDatasetLoader:
    """A process's training loader over shards: ``len(loader)`` batches of
    ``(images, labels = NO_LABEL)`` per epoch; :meth:`set_epoch` before each epoch."""

    def __init__(self, streams: _EpochStreams, *, workers: int, pin_memory: bool) -> None:
        self.dataset = streams
        self.batch_size = streams.batch_size
        self.num_workers = streams.streams if workers > 0 else 0
        self.pin_memory = pin_memory

    def streams_with(self, workers: int) -> int:
        """The number of streams ``workers`` loader workers make of this process's shards: the
        epoch's batches are the same for the same number (not with another)."""
        return _stream_count(workers, self.dataset.shards)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Point at ``epoch``, skipping its first ``start_batch`` batches (a mid-epoch resume)."""
        if not 0 <= start_batch <= self.dataset.images.epoch_iters:
            raise ValueError(f"start_batch {start_batch} outside 0..{self.dataset.images.epoch_iters}")
        self.dataset.epoch, self.dataset.start = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return self.dataset.images.epoch_iters - self.dataset.start

    def __iter__(self):
        # a fresh DataLoader per epoch: its workers copy the epoch and start set now; its own
        # generator, so the workers' base seed is not drawn from the model's random stream
        return iter(DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                               pin_memory=self.pin_memory, worker_init_fn=ignore_stop_signals,
                               generator=torch.Generator().manual_seed(0)))


def build_webdataset_train(pattern: str, *, epoch_iters: int, aug: str, image_size: int, norm: str,
                           data_root: Optional[str] = None, num_classes: Optional[int] = None,
                           randaug_n: int = 2, randaug_m: int = 10,
                           shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER) -> WebDatasetImages:
    """The training images of the shards ``pattern`` names (:func:`expand_shards`), with the
    ``--aug`` transform the split datasets get (:func:`~gpaco.data.transforms.build_train_transform`)."""
    mean, std = NORMALIZATION[norm]
    transform = build_train_transform(aug, image_size=image_size, mean=mean, std=std, randaug_n=randaug_n,
                                      randaug_m=randaug_m)
    return WebDatasetImages(expand_shards(pattern, data_root), transform, epoch_iters=epoch_iters,
                            num_classes=num_classes, shuffle_buffer=shuffle_buffer, name=pattern)
