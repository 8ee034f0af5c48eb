"""Torch dataset over a crop manifest: yields (uint8 crop (3, 224, 224), label, index).

The index is the position within this (filtered) dataset, so evaluation can map a score back to
`video_ids[index]` and `datasets[index]` whatever order a DataLoader delivers batches in.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from train.augment import IndexedTransform
from train.data.manifest import CropRecord, crop_path, read_manifest, resolve_manifest


class CropDataset(Dataset[tuple[Tensor, int, int]]):
    """Crops of one manifest, optionally restricted to a split and/or a dataset name (or list of names)."""

    def __init__(
        self,
        manifest_path: str | Path,
        split: str | None = None,
        dataset: str | list[str] | None = None,
        transform: IndexedTransform | None = None,
    ) -> None:
        self.manifest_path = resolve_manifest(manifest_path)
        wanted = {dataset} if isinstance(dataset, str) else set(dataset) if dataset is not None else None
        self.records: list[CropRecord] = [
            r
            for r in read_manifest(self.manifest_path)
            if (split is None or r.split == split) and (wanted is None or r.dataset in wanted)
        ]
        self.transform = transform
        self.root = self.manifest_path.parent

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def video_ids(self) -> list[str]:
        return [r.video_id for r in self.records]

    @property
    def frame_indices(self) -> list[int]:
        return [r.frame_index for r in self.records]

    @property
    def datasets(self) -> list[str]:
        return [r.dataset for r in self.records]

    def load(self, index: int) -> Tensor:
        """The stored crop as uint8 RGB (3, H, W), untransformed."""
        path = crop_path(self.manifest_path, self.records[index])
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read crop {path}")
        return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image, index)
        return image.contiguous(), self.records[index].label, index


def collate(batch: list[tuple[Tensor, int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Stack to (N, 3, H, W) uint8, labels (N,) int64, indices (N,) int64."""
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([b[1] for b in batch], dtype=torch.int64)
    indices = torch.tensor([b[2] for b in batch], dtype=torch.int64)
    return images, labels, indices
