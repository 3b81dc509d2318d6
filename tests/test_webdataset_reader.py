"""The webdataset tar-shard reader (gpaco/data/webdataset_reader.py) on tiny shards this file
writes (JPEG images, with the captions and metadata CC3M's shards carry): images decode through
the split datasets' transforms, an epoch is a fixed number of batches, processes and loader
workers read disjoint shards that together hold every image, an epoch and its mid-epoch resume
are the same batches, and the errors name what is missing."""
from __future__ import annotations

import io
import json
import sys
import tarfile
from collections import Counter

import pytest
import torch
import torchvision.transforms as T
from PIL import Image

pytest.importorskip("webdataset")

from gpaco.data.splits import DataError  # noqa: E402
from gpaco.data.transforms import NORMALIZATION  # noqa: E402
from gpaco.data.webdataset_reader import (  # noqa: E402
    NO_LABEL, WebDatasetImages, build_webdataset_train, expand_shards,
)

SHARDS, PER_SHARD = 4, 3  # images 0..11; image k is a solid colour with red = 20 k
PATTERN = "cc3m-train-{000000..000003}.tar"


def _jpeg(k: int) -> bytes:
    """16 x 8: the left 8 x 8 JPEG block a solid colour naming the image, the right one noise
    (so that crops and flips show)."""
    pixels = torch.randint(0, 256, (8, 16, 3), generator=torch.Generator().manual_seed(k), dtype=torch.uint8)
    pixels[:, :8] = torch.tensor([20 * k, 255 - 20 * k, 7], dtype=torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buf, "JPEG", quality=95, subsampling=0)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """4 shards of 3 samples (jpg + txt caption + json), written with webdataset's TarWriter."""
    import webdataset as wds

    root = tmp_path_factory.mktemp("cc3m")
    for s in range(SHARDS):
        with wds.TarWriter(str(root / f"cc3m-train-{s:06d}.tar")) as sink:
            for i in range(PER_SHARD):
                k = s * PER_SHARD + i
                sink.write({"__key__": f"{k:09d}", "jpg": _jpeg(k), "txt": f"a photo number {k}",
                            "json": json.dumps({"key": k}).encode()})
    return root


def _ids(images: torch.Tensor) -> list:
    """Image numbers of a batch read with ToTensor (JPEG moves a solid colour by a unit or two)."""
    return [round(float(v) * 255 / 20) for v in images[:, 0, 0, 0]]


def _reader(shards, **kw) -> WebDatasetImages:
    kw.setdefault("shuffle_buffer", 4)
    return WebDatasetImages(expand_shards(PATTERN, str(shards)), T.ToTensor(), **kw)


def _epoch(loader, epoch: int = 0, start: int = 0) -> list:
    loader.set_epoch(epoch, start)
    assert len(loader) == loader.dataset.images.epoch_iters - start
    return [batch for batch in loader]


def test_images_decode_through_the_split_datasets_transform(shards):
    """``--aug none`` (resize + centre crop + ToTensor + Normalize) of the solid-colour half gives
    that colour normalised; the labels are NO_LABEL."""
    images = build_webdataset_train(PATTERN, data_root=str(shards), epoch_iters=2, aug="none", image_size=8,
                                    norm="imagenet", num_classes=1000)
    images.transform.transforms.insert(0, lambda img: img.crop((0, 0, 8, 8)))
    assert images.shards == [str(shards / f"cc3m-train-{s:06d}.tar") for s in range(SHARDS)]
    loader = images.loader(batch_size=3, workers=0)
    mean, std = (torch.tensor(v)[:, None, None] for v in NORMALIZATION["imagenet"])
    for x, y in _epoch(loader):
        assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
        assert y.tolist() == [NO_LABEL] * 3
        for img in x:
            pixels = img * std + mean  # back to [0, 1]
            k = round(float(pixels[0, 0, 0]) * 255 / 20)
            expected = torch.tensor([20 * k, 255 - 20 * k, 7])[:, None, None] / 255
            assert torch.allclose(pixels, expected.expand_as(pixels), atol=3 / 255)


@pytest.mark.parametrize("epoch_iters", [1, 3, 7])
def test_an_epoch_is_a_fixed_number_of_batches(shards, epoch_iters):
    """Whatever the number of images: ``epoch_iters`` full batches, the passes over the shards
    repeating them as evenly as the count allows (each pass holds every image once)."""
    loader = _reader(shards, epoch_iters=epoch_iters).loader(batch_size=5, workers=0)
    batches = _epoch(loader)
    assert len(batches) == epoch_iters and all(len(x) == 5 for x, _ in batches)
    seen = Counter(k for x, _ in batches for k in _ids(x))
    total = 5 * epoch_iters
    passes, rest = divmod(total, SHARDS * PER_SHARD)
    assert sum(seen.values()) == total and set(seen) <= set(range(12))
    assert sorted(Counter(seen.values()).items()) == sorted(Counter(
        [passes + 1] * rest + [passes] * (12 - rest) if passes else [1] * rest).items())


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_read_disjoint_shards_that_hold_every_image(shards, workers):
    """Rank r of 2 reads shards r, r + 2: one epoch of 2 batches of 3 is one pass over them."""
    reader = _reader(shards, epoch_iters=2)
    per_rank = []
    for rank in range(2):
        loader = reader.loader(batch_size=3, workers=workers, rank=rank, world_size=2)
        per_rank.append([k for x, _ in _epoch(loader) for k in _ids(x)])
    for rank, ids in enumerate(per_rank):
        assert len(ids) == len(set(ids)) == 6
        assert {k // PER_SHARD for k in ids} == {rank, rank + 2}
    assert set(per_rank[0]).isdisjoint(per_rank[1]) and set(per_rank[0]) | set(per_rank[1]) == set(range(12))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # more workers than this machine's CPUs
@pytest.mark.parametrize("workers", [2, 3, 8])
def test_loader_workers_read_disjoint_shards(shards, workers):
    """Workers split a process's shards (at most one worker per shard): one pass of every
    worker's shards is every image once, also when the workers hold unequal numbers of shards
    (3 workers, 4 shards: 6 / 3 / 3 images)."""
    loader = _reader(shards, epoch_iters=4).loader(batch_size=3, workers=workers)
    assert loader.num_workers == min(workers, SHARDS)
    ids = [k for x, _ in _epoch(loader) for k in _ids(x)]
    assert sorted(ids) == list(range(12))


def test_an_epoch_repeats_and_resumes_exactly(shards):
    """Same (seed, epoch): the same batches, augmentation included; ``start_batch`` k gives the
    uninterrupted epoch's batches from k on; another epoch is another order."""
    images = build_webdataset_train(PATTERN, data_root=str(shards), epoch_iters=6, aug="crop_flip", image_size=8,
                                    norm="imagenet", shuffle_buffer=5)
    loader = images.loader(batch_size=2, workers=2, seed=3)
    first = _epoch(loader, epoch=1)
    again = _epoch(loader, epoch=1)
    tail = _epoch(loader, epoch=1, start=3)
    assert len(tail) == 3
    for a, b in zip(first, again):
        assert torch.equal(a[0], b[0])
    for a, b in zip(first[3:], tail):
        assert torch.equal(a[0], b[0])
    other = _epoch(loader, epoch=2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_reading_in_the_main_process_leaves_the_model_random_stream(shards):
    """workers=0: the per-image seeding does not move torch's, NumPy's or Python's generator."""
    import random

    import numpy as np

    loader = build_webdataset_train(PATTERN, data_root=str(shards), epoch_iters=2, aug="crop_flip", image_size=8,
                                    norm="imagenet").loader(batch_size=2, workers=0)
    loader.set_epoch(0)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = torch.rand(1), np.random.rand(), random.random()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    for _ in loader:
        pass
    assert (torch.rand(1), np.random.rand(), random.random()) == expected


# --------------------------------------------------------------------------- errors

def test_a_pattern_that_matches_nothing_is_one_error_line(shards):
    with pytest.raises(DataError, match=r"no shard file matches .*cc3m-val-\*\.tar"):
        expand_shards("cc3m-val-*.tar", str(shards))
    with pytest.raises(DataError, match=r"1 of 5 shard files are missing, e\.g\. .*cc3m-train-000004\.tar"):
        expand_shards("cc3m-train-{000000..000004}.tar", str(shards))
    assert len(expand_shards(str(shards / "cc3m-train-*.tar"))) == SHARDS  # absolute, wildcard


def test_webdataset_missing_says_how_to_install(shards, monkeypatch):
    monkeypatch.setitem(sys.modules, "webdataset", None)  # import webdataset -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'gpaco\[webdataset\]'"):
        expand_shards(PATTERN, str(shards))
    with pytest.raises(ImportError, match=r"needs the webdataset package"):
        WebDatasetImages([str(shards / "cc3m-train-000000.tar")], T.ToTensor(), epoch_iters=1)


def test_fewer_shards_than_processes_and_shards_without_images(shards, tmp_path):
    reader = _reader(shards, epoch_iters=1)
    with pytest.raises(DataError, match=r"4 shard file\(s\) for 5 processes"):
        reader.loader(batch_size=2, workers=0, rank=0, world_size=5)
    with tarfile.open(tmp_path / "captions-000000.tar", "w") as tar:  # captions only
        data = b"a caption"
        info = tarfile.TarInfo("000000001.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    loader = WebDatasetImages(expand_shards(str(tmp_path / "captions-*.tar")), T.ToTensor(),
                              epoch_iters=1).loader(batch_size=2, workers=0)
    with pytest.raises(DataError, match=r"captions-000000\.tar: no image \(jpg/jpeg/png/webp\)"):
        _epoch(loader)
