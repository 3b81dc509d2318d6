"""CIFAR's test images are evaluated as they are (ToTensor > Normalize, as every original CIFAR
script), not upscaled to 36 and center-cropped back to 32 (the ImageNet-style default resize of
image_size / 0.875, which every CIFAR recipe got before: none passes --resize-size)."""
import pickle

import numpy as np
import torch

from gpaco.data.build import build_eval_dataset
from gpaco.data.transforms import NORMALIZATION


def _fake_cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8)
    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": images, b"fine_labels": [0, 1, 2, 3]}, f)
    with open(folder / "train", "wb") as f:
        pickle.dump({b"data": images, b"fine_labels": [0, 1, 2, 3]}, f)
    return images.reshape(4, 3, 32, 32)


def test_cifar_test_images_are_not_resized(tmp_path):
    pixels = _fake_cifar100(tmp_path)
    ds = build_eval_dataset(None, dataset="cifar100", data_root=str(tmp_path), num_classes=100, image_size=32,
                            norm="cifar100")
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATION["cifar100"])
    image, label = ds[2]
    assert label == 2
    assert torch.allclose(image, (torch.from_numpy(pixels[2]).float() / 255 - mean) / std, atol=1e-6)
