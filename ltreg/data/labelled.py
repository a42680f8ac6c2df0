"""A labelled folder or table read as images to score, never as a data set to train on.

``ltreg eval MODEL --data-root NEW`` reads ``NEW`` with :func:`read_labelled`: every image of a flat
folder of class sub-folders (nothing is held out), the chosen split folder of a split layout
(``test/``, else ``val/``), or one split of a ``datasets`` table (``save_to_disk`` folder, parquet or
arrow files). Class names are kept as found; :mod:`ltreg.evaluate` matches them to the model's classes
by name. :attr:`LabelledSet.scored` says in words what is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltreg.data.folder import SPLIT_DIRS, SPLIT_LIKE, _subdirs, detect_layout, scan
from ltreg.data.hf import TEST_SPLITS, _labels, load_table, prepare
from ltreg.data.sources import FileSource, HFSource
from ltreg.errors import DataArgumentError, DataLayoutError

#: The ``--data-arg`` names a labelled folder or table takes (anything else belongs to a data set builder).
OPTIONS = ("layout", "image_column", "label_column")
#: Split name -> the folder / table split names that serve as it, in order of preference.
SPLIT_NAMES = {"test": ("test", "val", "validation"), "val": ("val", "validation", "valid"), "train": ("train",)}


@dataclass
class LabelledSet:
    """Images with the class names they were found under (``labels`` index ``class_names``)."""

    root: str
    kind: str  # "image folder" or "datasets table"
    scored: str  # what is scored, in words
    source: Any  # an ImageSource
    labels: np.ndarray
    class_names: list[str]
    skipped: int = 0  # unreadable images left out


def is_table(path: Path) -> bool:
    """Whether ``path`` holds a ``datasets`` table: a ``save_to_disk`` folder or parquet / arrow files."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return True
    return any(next(path.glob(pattern), None) is not None
               for pattern in ("*.parquet", "*/*.parquet", "*.arrow", "*/*.arrow"))


def _check_split(split: str) -> None:
    if split not in SPLIT_NAMES:
        raise DataArgumentError(f"--split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")


def read_folder(base: Path, split: str, channels: int, image_size: int | None, layout: str | None = None) -> LabelledSet:
    """A folder of class sub-folders: flat (every image scored) or split (``split``'s folder scored).

    Unlike training, a split layout needs no ``train/`` and a flat folder may hold a single class.
    """
    _check_split(split)
    if layout not in (None, "flat", "split"):
        raise DataArgumentError(f"layout must be 'flat' or 'split' (or unset: detected), got {layout!r}")
    dirs = _subdirs(base)
    splits = [d for d in dirs if d.lower() in SPLIT_LIKE]
    if layout == "flat" or (layout is None and not splits):
        folder, scored = base, f"image folder {base} (flat): every image of its class folders, nothing held out"
    else:
        if not splits or len(splits) != len(dirs) or any(d.lower() not in SPLIT_DIRS for d in splits):
            detect_layout(base, layout)  # raises the training reader's message for a mixed or unknown layout
        found = {SPLIT_DIRS[d.lower()]: d for d in splits}
        role = next((r for r in SPLIT_NAMES[split] if SPLIT_DIRS.get(r) in found), None)
        if role is None:
            have = ", ".join(f"{d}/" for d in splits) or "no split folders"
            raise DataLayoutError(f"{base} has {have} but no {split} folder to score; pass --split "
                                  f"{' or --split '.join(sorted(found))}, or point --data-root at a class folder")
        folder = base / found[SPLIT_DIRS[role]]
        instead = "" if SPLIT_DIRS[role] == split else f" (it has no {split}/ folder)"
        scored = f"image folder {base} (split layout): {folder.name}/{instead}"
    classes = _subdirs(folder)
    if not classes:
        raise DataLayoutError(f"{folder} has no class sub-folders: expected {folder}/<class>/<image>, the class "
                              f"folders named as the model's classes")
    found_scan = scan(folder, classes, on_bad_image="skip")
    return LabelledSet(str(base), "image folder", scored, FileSource(found_scan.paths, channels, image_size),
                       found_scan.targets, classes, len(found_scan.skipped))


def read_table(root: str, split: str, channels: int, image_size: int | None, image_column: str | None = None,
               label_column: str | None = None) -> LabelledSet:
    """One split of a ``datasets`` table: ``split`` (test: test / validation / val / valid), or the table's
    only split when it has one (then all its rows are scored)."""
    _check_split(split)
    dd, img, lab, class_names, _ = prepare(load_table(root), image_column, label_column)
    names = TEST_SPLITS if split == "test" else SPLIT_NAMES[split]
    name = next((s for s in names if s in dd), None)
    if name is None and len(dd) == 1:
        name = next(iter(dd))
        scored = f"datasets table {root}: all {len(dd[name])} rows of its only split {name!r}, nothing held out"
    elif name is None:
        raise DataLayoutError(f"{root} has the splits {', '.join(dd)} and none of them is a {split} split "
                              f"({', '.join(names)}); pass --split train or --split val")
    else:
        scored = f"datasets table {root}: split {name!r}"
    source = HFSource(dd[name], img, channels, image_size, name=f"{root}[{name}]")
    return LabelledSet(root, "datasets table", scored, source, _labels(dd[name], lab), class_names)


def read_labelled(root: str, split: str, channels: int, image_size: int | None,
                  options: dict[str, Any] | None = None) -> LabelledSet:
    """A folder of class sub-folders or a ``datasets`` table (a folder holding one, or a Hub id), its images
    read with ``channels`` and resized to ``image_size`` squares at load when given."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise DataArgumentError(
            f"--data-arg {unknown[0]} does not apply to a labelled folder or table (it takes {', '.join(OPTIONS)}); "
            f"to read --data-root with a data set builder and its arguments, pass --dataset NAME"
        )
    path = Path(root).expanduser()
    if path.is_dir() and not is_table(path):
        if options.get("image_column") or options.get("label_column"):
            raise DataArgumentError(f"{root} is a folder of images, not a table: image_column / label_column do not apply")
        return read_folder(path, split, channels, image_size, options.get("layout"))
    if not path.exists() and (root.startswith(("/", ".", "~")) or root.count("/") != 1):
        raise DataLayoutError(f"--data-root {root} does not exist (nor is it a Hub data set id org/name)")
    if options.get("layout"):
        raise DataArgumentError(f"{root} is a datasets table, not an image folder: layout does not apply")
    return read_table(str(path) if path.exists() else root, split, channels, image_size,
                      options.get("image_column"), options.get("label_column"))
