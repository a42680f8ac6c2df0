"""``imagefolder-lt``: image folders, flat (``root/<class>/``) or split (``root/train/<class>/`` + val / test).

Class folders are read as torchvision's ``ImageFolder`` reads them (``find_classes`` / ``make_dataset``:
sorted names are the labels, images found recursively by extension); split folder names are those
``datasets``' ``imagefolder`` loader knows best: ``train``, ``val`` / ``validation``, ``test``.
Anything ambiguous raises :class:`DataLayoutError` naming the folder and the fix.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.folder import make_dataset

from ltreg.data.infer import dataset_fields, infer_format
from ltreg.data.lt import LTData, LTDataset, make_lt_indices
from ltreg.data.sources import IMAGE_EXTENSIONS, FileSource
from ltreg.data.split import holdout
from ltreg.errors import DataError, DataLayoutError

#: Folder name -> split role.
SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
#: Names that look like splits: a top level holding one of these is never read as classes.
SPLIT_LIKE = set(SPLIT_DIRS) | {"training", "testing", "valid", "dev", "eval", "evaluation"}


def _subdirs(path: Path) -> list[str]:
    return sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def detect_layout(base: Path, layout: str | None = None) -> dict[str, Path]:
    """``{"train": folder, "val": folder?, "test": folder?}`` of a split layout, or ``{"flat": base}``.

    ``layout="flat"`` reads the top level as classes even when some are named like splits.
    """
    if layout not in (None, "flat", "split"):
        raise DataLayoutError(f"layout must be 'flat' or 'split' (or unset: detected), got {layout!r}")
    if not base.is_dir():
        raise DataLayoutError(f"image folder {base} does not exist")
    dirs = _subdirs(base)
    if not dirs:
        raise DataLayoutError(
            f"{base} has no sub-folders: expected {base}/<class>/<image> or {base}/train/<class>/<image>"
        )
    splits = [d for d in dirs if d.lower() in SPLIT_LIKE]
    if layout == "flat" or (not splits and layout is None):
        return {"flat": base}
    if not splits:
        raise DataLayoutError(
            f"{base} has no train/ folder (layout='split'): put the training images in {base}/train/<class>/, "
            f"or leave layout unset to read {base} as class folders"
        )
    others = [d for d in dirs if d.lower() not in SPLIT_LIKE]
    if others:
        raise DataLayoutError(
            f"{base} mixes split folders ({', '.join(splits) or '-'}) with other folders ({', '.join(others[:5])}): "
            f"put every class under {base}/train/<class>/ (and {base}/val/<class>/ or {base}/test/<class>/), "
            f"or, if these are all class folders, pass layout='flat' (--data-arg layout=flat)"
        )
    unread = [d for d in splits if d.lower() not in SPLIT_DIRS]
    if unread:
        raise DataLayoutError(
            f"{base}: split folder(s) {', '.join(unread)} are not split names ltreg reads; rename them to "
            f"train / val (or validation) / test"
        )
    roles: dict[str, Path] = {}
    for d in splits:
        role = SPLIT_DIRS[d.lower()]
        if role in roles:
            raise DataLayoutError(f"{base} has both {roles[role].name}/ and {d}/; keep one of them")
        roles[role] = base / d
    if "train" not in roles:
        raise DataLayoutError(
            f"{base} has {', '.join(d + '/' for d in splits)} but no train/ folder; put the training images in "
            f"{base}/train/<class>/"
        )
    return roles


def check_tree(top: Path) -> None:
    """Refuse a class folder that links back into itself (a loop torchvision would walk until the path is too
    long, yielding every image many times) or reaches one folder twice; names the link and the fix."""
    seen: dict[str, str] = {}
    for here, dirs, _files in os.walk(top, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            raise DataLayoutError(
                f"{here} is {seen[real]} again (through a symbolic link to {real}): a link loop or a folder linked "
                f"twice would read the same images several times, under wrong labels. Remove the link, or replace "
                f"it with a copy of the images it should add"
            )
        seen[real] = here
        if len(seen) > 100_000:
            raise DataLayoutError(f"{top} holds more than 100000 folders; is a link pointing at a system folder?")
        dirs.sort()


def duplicate_files(paths: list[str]) -> None:
    """Refuse two image paths that are one file: a symbolic link to another image, or a hard link (the
    same device and inode under two names)."""
    seen: dict[tuple[int, int], str] = {}
    for p in paths:
        st = os.stat(p)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            how = "a symbolic link" if os.path.islink(p) or os.path.islink(seen[key]) else "hard links"
            raise DataLayoutError(
                f"{p} and {seen[key]} are the same file ({how} to {os.path.realpath(p)}): it would be read twice, "
                f"possibly under two labels. Remove one of them, or replace it with a copy (links count as the "
                f"same image)"
            )
        seen[key] = p


@dataclass
class Scan:
    """The readable images of one folder of classes, with their header sizes and modes."""

    folder: Path
    classes: list[str]
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.labels, dtype=np.int64)


def scan(folder: Path, classes: list[str] | None, on_bad_image: str) -> Scan:
    """Class folders of ``folder`` (the training split's ``classes`` must match), each image opened once
    (header read and PIL ``verify``): unreadable files are skipped or raise, per ``on_bad_image``."""
    found = _subdirs(folder)
    if classes is None:
        if not found:
            loose = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())
            raise DataLayoutError(
                f"{folder} has no class sub-folders (expected {folder}/<class>/<image>)"
                + ("; its images lie directly in it: move each into a folder named after its class" if loose else "")
            )
        if len(found) == 1:
            raise DataLayoutError(
                f"{folder} has only one class folder ({found[0]!r}): a classifier needs two or more. If "
                f"{folder / found[0]} holds the class folders, pass it as the root"
            )
        classes = found
    elif found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise DataLayoutError(
            f"{folder}: its class folders differ from the training split's (missing: {', '.join(missing[:10]) or '-'}; "
            f"extra: {', '.join(extra[:10]) or '-'}); give every split the same class folders"
        )
    out = Scan(folder, classes)
    for c in classes:
        check_tree(folder / c)
    samples = make_dataset(str(folder), {c: i for i, c in enumerate(classes)}, IMAGE_EXTENSIONS, allow_empty=True)
    duplicate_files([p for p, _ in samples])
    for path, label in samples:
        try:
            with Image.open(path) as img:
                size, mode = img.size, img.mode
                img.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
            if on_bad_image == "error":
                raise DataError(
                    f"unreadable image {path}: {exc}; fix or delete it, or pass on_bad_image='skip'"
                ) from None
            out.skipped.append(path)
            continue
        out.paths.append(path)
        out.labels.append(label)
        out.sizes.append(size)
        out.modes.append(mode)
    counts = np.bincount(out.targets, minlength=len(classes))
    empty = [classes[c] for c in np.where(counts == 0)[0]]
    if empty:
        raise DataLayoutError(
            f"{folder}: class folder(s) with no readable image: {', '.join(empty[:10])}; add images or remove the folder(s)"
        )
    return out


def _lt(targets: np.ndarray, n: int, imbalance: float | None, profile: str, n_max: int | None, seed: int) -> np.ndarray:
    if imbalance is None:
        return np.arange(len(targets))
    return make_lt_indices(targets, n, imbalance, profile, n_max=n_max, seed=seed)


def imagefolder_lt(
    root: str,
    imbalance: float | None = None,
    profile: str = "exp",
    seed: int = 0,
    on_bad_image: str = "skip",
    test_fraction: float = 0.2,
    channels: int | None = None,
    image_size: int | None = None,
    resize: bool | None = None,
    n_max: int | None = None,
    many_thr: int | None = None,
    few_thr: int | None = None,
    layout: str | None = None,
    hflip: bool = False,
) -> LTData:
    """An image folder, lazily decoded: ``root/<class>/<image>`` or ``root/train/<class>/`` plus
    ``root/val/`` and / or ``root/test/`` with the same class folders.

    Split layout: ``test/`` (else ``val/``) is the test set and, with both, ``val/`` is ``LTData.val``.
    Flat layout (or ``train/`` alone): with ``imbalance`` (a balanced folder made long-tailed)
    ``test_fraction`` of the smallest class is held out from every class, i.e. balanced; without it
    ``test_fraction`` of each class, at least one image. ``imbalance`` makes the training images
    long-tailed (LDAM-DRW). Unreadable images are skipped (``info["skipped"]``, a warning) or raise
    naming the file (``on_bad_image="error"``). ``channels``, ``image_size``, ``resize`` and the
    many / few thresholds are inferred from the training images when not given (``LTData.summary``).
    ``layout`` ("flat" or "split") overrides the detection, e.g. for a class named ``train``.
    ``hflip=True`` says that a mirrored image keeps its class (photos of objects, scenes, animals), so
    training views flip; the default is no flip, since ltreg cannot tell (digits, text, signs change).
    """
    if on_bad_image not in ("skip", "error"):
        raise DataError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    base = Path(root)
    roles = detect_layout(base, layout)
    train_scan = scan(roles.get("train", base), None, on_bad_image)
    classes = train_scan.classes
    others = {role: scan(roles[role], classes, on_bad_image) for role in ("val", "test") if role in roles}
    skipped = train_scan.skipped + [p for s in others.values() for p in s.skipped]
    if skipped:
        warnings.warn(f"imagefolder-lt: skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}", stacklevel=2)
    targets = train_scan.targets
    test_scan = others.get("test", others.get("val"))
    if test_scan is None:
        test, pool = holdout(targets, len(classes), test_fraction, imbalance is not None, seed)
        layout = f"{'flat' if 'flat' in roles else 'train/ only'}: test = {test_fraction} of each class held out"
    else:
        test, pool = None, np.arange(len(targets))
        layout = "split folders: " + ", ".join(f"{role} = {p.name}/" for role, p in roles.items())
    train = pool[_lt(targets[pool], len(classes), imbalance, profile, n_max, seed)]
    notes = [layout]
    channels, image_size, resize, fmt_note = infer_format(train_scan.sizes, train_scan.modes, channels, image_size,
                                                          resize)
    notes.append(fmt_note)
    size = image_size if resize else None
    src = FileSource(train_scan.paths, channels, size)
    common = dataset_fields(
        classes, channels, image_size, np.bincount(targets[train], minlength=len(classes)), many_thr, few_thr, notes,
        {"source": str(base), "imbalance": imbalance, "profile": profile, "seed": seed, "resize": resize,
         "layout": "flat" if "flat" in roles else sorted(roles), "skipped": len(skipped), "skipped_files": skipped[:20]},
        hflip=hflip,
    )

    def split(s: Scan) -> tuple[FileSource, np.ndarray]:
        return FileSource(s.paths, channels, size), s.targets

    test_part = (src.subset(test), targets[test]) if test is not None else split(test_scan)
    val_part = split(others["val"]) if "val" in others and "test" in others else None
    data = LTData(
        train=LTDataset("imagefolder-lt", src.subset(train), targets[train], **common),
        test=LTDataset("imagefolder-lt-test", *test_part, **common),
        val=None if val_part is None else LTDataset("imagefolder-lt-val", *val_part, **common),
        summary="; ".join(notes),
    )
    data.train.check_train()
    return data
