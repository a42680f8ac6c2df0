"""Lazy image sources (the ``ImageSource`` protocol of ``lt.py``): image files and ``datasets`` tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ltreg.errors import DataError, ImageDecodeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def pil_to_tensor(img: Image.Image, channels: int, image_size: int | None = None) -> Tensor:
    """A PIL image as uint8 ``[C, H, W]`` with ``channels`` 1 (L) or 3 (RGB), optionally resized square."""
    img = img.convert("L" if channels == 1 else "RGB")
    if image_size is not None and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    arr = torch.from_numpy(np.array(img, dtype=np.uint8))
    return arr.unsqueeze(0) if channels == 1 else arr.permute(2, 0, 1).contiguous()


def pil_channels(img: Image.Image) -> int:
    """1 for grey-level modes, 3 otherwise (alpha and palettes are flattened to RGB)."""
    return 1 if img.mode in ("1", "L", "I", "I;16", "F") else 3


@dataclass
class FileSource:
    """Images decoded from files on demand with PIL.

    ``image_size`` resizes every image to a square of that side at load, for small sets whose files
    differ in size; large sets leave it ``None`` and let the transforms crop.
    """

    paths: Sequence[str]
    channels: int = 3
    image_size: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> Tensor:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                return pil_to_tensor(img, self.channels, self.image_size)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageDecodeError(
                f"cannot decode image {path}: {exc}. The file is truncated or not an image: replace or delete "
                f"it and rerun (imagefolder-lt skips files it cannot open at build time; a truncated JPEG is "
                f"only found when its pixels are decoded)"
            ) from exc

    def subset(self, idx: np.ndarray) -> FileSource:
        return FileSource([self.paths[int(i)] for i in idx], self.channels, self.image_size)


@dataclass
class HFSource:
    """Images of one column of a ``datasets.Dataset``, decoded on demand (``image_size``: resized square)."""

    dataset: Any
    image_column: str
    channels: int = 3
    image_size: int | None = None
    name: str = "dataset"

    def __post_init__(self) -> None:
        if self.image_column not in self.dataset.column_names:
            raise DataError(f"no image column {self.image_column!r}; columns are {self.dataset.column_names}")
        self.dataset = self.dataset.select_columns([self.image_column])

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, i: int) -> Tensor:
        try:
            img = self.dataset[int(i)][self.image_column]
            if not isinstance(img, Image.Image):
                img = Image.fromarray(np.asarray(img, dtype=np.uint8))
            return pil_to_tensor(img, self.channels, self.image_size)
        except Exception as exc:  # noqa: BLE001 - datasets and PIL raise many types for broken cells
            raise ImageDecodeError(
                f"cannot decode the image in row {i} of {self.name} (column {self.image_column!r}): "
                f"{type(exc).__name__}: {exc}. Replace or drop that row (e.g. ds.filter) and save the data set again"
            ) from exc
