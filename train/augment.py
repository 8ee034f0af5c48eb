"""Training augmentations (DESIGN.md section 3) on aligned face crops.

Decision: transforms work on uint8 CHW tensors (3, 224, 224), the form `CropDataset` yields; the model's
`normalise` does the float conversion and CLIP normalisation later, so augmentation never sees floats and
JPEG re-encoding acts on real 8-bit pixels. Every transform is called as ``t(image, index)``.

Reproducibility: the random draws of one sample are a pure function of (seed, epoch, index), not of
the order in which DataLoader workers happen to run, so a resumed run and a run with a different number
of workers see exactly the same augmented crops.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import v2


class IndexedTransform(Protocol):
    """What `CropDataset` calls: a uint8 (3, H, W) tensor and the sample's index in, a uint8 tensor out."""

    def __call__(self, image: Tensor, index: int) -> Tensor: ...


class RandomJPEG(torch.nn.Module):
    """JPEG re-encoding at a quality drawn uniformly from [q_min, q_max] (OpenCV's libjpeg).

    Not torchvision's `JPEG`: torchvision's image codecs are deprecated since 0.29; OpenCV is already a
    dependency of the face pipeline.
    """

    def __init__(self, quality: tuple[int, int] = (40, 100)) -> None:
        super().__init__()
        self.quality = quality

    def forward(self, image: Tensor) -> Tensor:
        q = int(torch.randint(self.quality[0], self.quality[1] + 1, ()).item())
        hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        ok, buf = cv2.imencode(".jpg", hwc[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if bgr is None:
            raise RuntimeError("JPEG decoding failed")
        return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class AugmentSettings:
    """The training augmentation chain's parameters; `train.recipes` gives each its reference source.

    ``blur_kernel`` is (width, height), torchvision's ``kernel_size`` order: deepfake-detection's
    ``GaussianBlur(kernel_size=(3, 7))`` is one 3-wide x 7-high kernel, not a range of sizes.
    ``blur_p`` 1.0 applies the blur to every image (no RandomApply draw), as that reference does.
    """

    flip_p: float = 0.5
    affine_degrees: float = 10.0
    affine_translate: tuple[float, float] = (0.1, 0.1)
    affine_scale: tuple[float, float] = (0.9, 1.1)
    blur_p: float = 1.0
    blur_kernel: tuple[int, int] = (3, 7)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    jitter_brightness: float = 0.1
    jitter_contrast: float = 0.1
    jpeg_quality: tuple[int, int] = (40, 100)


def build_train_pipeline(settings: AugmentSettings | None = None) -> v2.Compose:
    """The augmentation chain in the reference's order; draws from torch's global RNG (`SeededTransform`)."""
    a = settings or AugmentSettings()
    steps: list[torch.nn.Module] = []
    if a.flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(p=a.flip_p))
    steps.append(v2.RandomAffine(degrees=a.affine_degrees, translate=a.affine_translate, scale=a.affine_scale))
    if a.blur_p > 0:
        blur = v2.GaussianBlur(kernel_size=list(a.blur_kernel), sigma=a.blur_sigma)
        steps.append(blur if a.blur_p >= 1.0 else v2.RandomApply([blur], p=a.blur_p))
    steps.append(v2.ColorJitter(brightness=a.jitter_brightness, contrast=a.jitter_contrast))
    if a.jpeg_quality[0] < 100:
        steps.append(RandomJPEG(a.jpeg_quality))
    return v2.Compose(steps)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (hash, so nearby indices give unrelated streams)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class SeededTransform:
    """Runs a global-RNG torchvision pipeline under a per-(seed, epoch, index) seed.

    `set_epoch` must be called at each epoch start so that epochs see different augmentations.
    The global RNG state of the caller is left untouched (fork_rng).
    """

    def __init__(self, pipeline: v2.Compose, seed: int) -> None:
        self.pipeline = pipeline
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, image: Tensor, index: int) -> Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, index))
            out: Tensor = self.pipeline(image)
        return out


def train_transform(seed: int = 42, settings: AugmentSettings | None = None) -> SeededTransform:
    """The training transform: the recipe's augmentations, deterministic given `seed`."""
    return SeededTransform(build_train_pipeline(settings), seed)


def eval_transform(image: Tensor, index: int) -> Tensor:
    """Evaluation transform: identity, because crops are already aligned 224x224 (as in serving)."""
    return image
