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
from typing import Protocol

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

#: Probability that the Gaussian blur is applied (the method lists blur without a rate; 0.1 is the reference
#: code's default). Flip keeps its published 0.5; affine, jitter and JPEG always apply.
BLUR_PROB = 0.1


class IndexedTransform(Protocol):
    """What `CropDataset` calls: a uint8 (3, H, W) tensor and the sample's index in, a uint8 tensor out."""

    def __call__(self, image: Tensor, index: int) -> Tensor: ...


class RandomKernelBlur(torch.nn.Module):
    """Gaussian blur with an odd kernel drawn from [k_min, k_max] and sigma from [s_min, s_max].

    torchvision's GaussianBlur fixes the kernel size; the method draws it (3-7).
    """

    def __init__(self, kernel: tuple[int, int] = (3, 7), sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        super().__init__()
        self.kernels = list(range(kernel[0] | 1, kernel[1] + 1, 2))
        self.sigma = sigma

    def forward(self, image: Tensor) -> Tensor:
        k = self.kernels[int(torch.randint(len(self.kernels), ()).item())]
        s = float(torch.empty(()).uniform_(self.sigma[0], self.sigma[1]).item())
        return TF.gaussian_blur(image, kernel_size=[k, k], sigma=[s, s])


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


def build_train_pipeline() -> v2.Compose:
    """The published augmentation chain; draws from torch's global RNG (see `SeededTransform`)."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomAffine(degrees=10.0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            v2.RandomApply([RandomKernelBlur((3, 7), (0.1, 2.0))], p=BLUR_PROB),
            v2.ColorJitter(brightness=0.1, contrast=0.1),
            RandomJPEG((40, 100)),
        ]
    )


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


def train_transform(seed: int = 42) -> SeededTransform:
    """The training transform: the published augmentations, deterministic given `seed`."""
    return SeededTransform(build_train_pipeline(), seed)


def eval_transform(image: Tensor, index: int) -> Tensor:
    """Evaluation transform: identity, because crops are already aligned 224x224 (as in serving)."""
    return image
