"""``hf-lt``: any 🤗 ``datasets`` image-classification table, read with ``datasets``' own loaders.

``root`` is a ``save_to_disk`` folder (``load_from_disk``), a folder of data files such as parquet or
arrow (``load_dataset(folder)``) or a Hub id (``load_dataset(id)``). An image column that is not an
``Image`` feature (``{bytes, path}`` structs written by pandas / pyarrow, raw bytes, file paths) is cast
to one with ``cast_column``; string labels are encoded with ``class_encode_column``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ltreg.data.infer import dataset_fields, infer_format
from ltreg.data.lt import LTData, LTDataset, make_lt_indices, subset_source
from ltreg.data.sources import HFSource
from ltreg.data.split import holdout
from ltreg.errors import DataError, DataLayoutError

IMAGE_NAMES = ("image", "img", "images", "picture", "pixel_values")
LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "category")
TEST_SPLITS = ("test", "validation", "val", "valid")
FORMAT_SAMPLE = 64


def load_table(root: str) -> Any:
    """A ``DatasetDict`` (a single ``Dataset`` becomes its ``train`` split)."""
    import datasets

    path = Path(root).expanduser()
    if not path.exists() and (root.startswith(("/", ".", "~")) or root.count("/") > 1):
        raise DataLayoutError(f"folder {root} does not exist (and it is no Hub id, which reads org/name)")
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one actionable message
        where = "folder" if path.is_dir() else "Hub id (needs network or the HF cache)"
        raise DataError(
            f"cannot load the datasets {where} {root!r}: {type(exc).__name__}: {exc}. Pass root= a "
            f"`save_to_disk` folder, a folder of parquet / arrow files (train-*.parquet, test-*.parquet) or a Hub id"
        ) from exc
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict(train=loaded)
    return loaded


def _is_image_struct(feature: Any) -> bool:
    return isinstance(feature, dict) and {"bytes", "path"} <= set(feature)


def _is_value(feature: Any, *dtypes: str) -> bool:
    import datasets

    return isinstance(feature, datasets.Value) and any(feature.dtype.startswith(d) for d in dtypes)


def pick_columns(features: Any, image_column: str | None, label_column: str | None) -> tuple[str, str, str]:
    """``(image, label, note)``: the columns given, else detected (``Image`` then ``{bytes, path}`` structs,
    then known names; ``ClassLabel`` then known names with integer or string values)."""
    import datasets

    names = list(features)
    kinds = ", ".join(f"{n} ({type(f).__name__ if not isinstance(f, dict) else 'struct'})" for n, f in features.items())
    for given, kind in ((image_column, "image"), (label_column, "label")):
        if given is not None and given not in names:
            raise DataLayoutError(f"no {kind} column {given!r}; columns are {kinds}")
    img = image_column or next(
        (n for n in names if isinstance(features[n], datasets.Image)), None
    ) or next((n for n in names if _is_image_struct(features[n])), None) or next(
        (n for n in IMAGE_NAMES if n in names and _is_value(features[n], "binary", "large_binary", "string", "large_string")), None
    )
    if img is None:
        raise DataLayoutError(f"cannot tell the image column among {kinds}; pass image_column=")
    lab = label_column or next(
        (n for n in names if isinstance(features[n], datasets.ClassLabel)), None
    ) or next((n for n in LABEL_NAMES if n in names and _is_value(features[n], "int", "uint", "string", "large_string")), None)
    if lab is None:
        raise DataLayoutError(f"cannot tell the label column among {kinds}; pass label_column=")
    how = "given" if label_column else ("ClassLabel" if isinstance(features[lab], datasets.ClassLabel) else "by name")
    note = f"image column {img!r}{' (given)' if image_column else ''}, label column {lab!r} ({how})"
    return img, lab, note


def prepare(dd: Any, image_column: str | None, label_column: str | None) -> tuple[Any, str, str, list[str], str]:
    """Cast the image column to ``Image`` and the labels to ``ClassLabel`` where needed, check for empty cells:
    ``(dd, image, label, class_names, note)``."""
    import datasets

    first = next(iter(dd.values()))
    img, lab, note = pick_columns(first.features, image_column, label_column)
    for split, ds in dd.items():
        missing = [c for c in (img, lab) if c not in ds.column_names]
        if missing:
            raise DataLayoutError(f"split {split!r} has no column {missing[0]!r}; columns are {ds.column_names}")
        for col in (img, lab):
            nulls = ds.data.column(col).null_count
            if nulls:
                raise DataError(f"split {split!r}: {nulls} row(s) with no {col!r}; drop them (ds.filter) or fill them")
    if not isinstance(first.features[img], datasets.Image):
        dd = dd.cast_column(img, datasets.Image())
        note += f" (cast to Image from {'a {bytes, path} struct' if _is_image_struct(first.features[img]) else first.features[img].dtype})"
    feature = first.features[lab]
    if _is_value(feature, "string", "large_string"):
        dd = dd.class_encode_column(lab)
        note += ", string labels encoded in sorted order"
    feature = next(iter(dd.values())).features[lab]
    if isinstance(feature, datasets.ClassLabel):
        class_names = list(feature.names)
    else:
        top = max(int(np.max(_labels(ds, lab), initial=-1)) for ds in dd.values())
        class_names = [str(i) for i in range(top + 1)]
    return dd, img, lab, class_names, note


def _labels(ds: Any, column: str) -> np.ndarray:
    """The label column as integers; a float or boolean column is refused, never truncated (1.7 is not class 1)."""
    raw = np.asarray(ds.data.column(column).to_numpy())
    if raw.dtype.kind not in "iu":
        example = next((v for v in raw.tolist() if v != int(v)), raw[0].item() if len(raw) else None) \
            if raw.dtype.kind == "f" else (raw[0].item() if len(raw) else None)
        raise DataError(
            f"the label column {column!r} holds {raw.dtype} values (e.g. {example!r}), not integer class indices; "
            f"ltreg refuses them rather than truncate 1.7 to class 1. Convert the column to integers (or to strings, "
            f"which are encoded in sorted order), or pass --data-arg label_column=NAME for the right column"
        )
    return raw.astype(np.int64)


def sample_format(ds: Any, column: str, n: int = FORMAT_SAMPLE) -> tuple[list[tuple[int, int]], list[str]]:
    """Header sizes and modes of ``n`` evenly spaced images (opened without decoding the pixels)."""
    import datasets

    raw = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    rows = np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).astype(np.int64))
    sizes, modes = [], []
    for i in rows.tolist():
        cell = raw[i][column]
        try:
            with Image.open(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]) as im:
                sizes.append(im.size)
                modes.append(im.mode)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
            raise DataError(
                f"row {i} of column {column!r} is not a readable image ({exc}); fix or drop that row"
            ) from None
    return sizes, modes


def select_splits(dd: Any, train_split: str, test_split: str | None) -> tuple[str, str | None]:
    if train_split not in dd:
        raise DataLayoutError(f"no split {train_split!r}; splits are {list(dd)}; pass train_split=")
    if test_split is not None:
        if test_split not in dd:
            raise DataLayoutError(f"no split {test_split!r}; splits are {list(dd)}")
        return train_split, test_split
    return train_split, next((s for s in TEST_SPLITS if s in dd and s != train_split), None)


def hf_lt(
    root: str,
    image_column: str | None = None,
    label_column: str | None = None,
    imbalance: float | None = None,
    profile: str = "exp",
    seed: int = 0,
    test_split: str | None = None,
    train_split: str = "train",
    n_max: int | None = None,
    many_thr: int | None = None,
    few_thr: int | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    resize: bool | None = None,
    test_fraction: float = 0.2,
    hflip: bool = False,
) -> LTData:
    """Any ``datasets`` image-classification set, lazily decoded; ``imbalance=None`` keeps the training split.

    Test split: ``test_split``, else the first of test / validation / val / valid, else ``test_fraction``
    of every class held out (balanced when ``imbalance`` is given). Channels, image size (median shorter
    side of 64 sampled images, at most 224) and many / few thresholds are inferred unless given;
    mean / std are ImageNet's for colour, 0.5 / 0.5 for grey-level images. ``hflip=True`` says that a
    mirrored image keeps its class, so training views flip (default: no flip, noted in the summary).
    """
    dd, img, lab, class_names, note = prepare(load_table(root), image_column, label_column)
    train_name, test_name = select_splits(dd, train_split, test_split)
    train_ds = dd[train_name]
    if len(train_ds) == 0:
        raise DataLayoutError(f"{root!r}: the training split {train_name!r} has no rows")
    y_all = _labels(train_ds, lab)
    num_classes = len(class_names)
    notes = [note]
    if test_name is None:
        test_idx, pool = holdout(y_all, num_classes, test_fraction, imbalance is not None, seed)
        test_ds, y_te = train_ds, y_all[test_idx]
        notes.append(f"no test split: {test_fraction} of each class of {train_name!r} held out")
    else:
        test_idx, pool = None, np.arange(len(y_all))
        test_ds = dd[test_name]
        y_te = _labels(test_ds, lab)
        notes.append(f"splits {train_name!r} / {test_name!r}")
    idx = pool if imbalance is None else pool[make_lt_indices(y_all[pool], num_classes, imbalance, profile, n_max, seed)]
    if channels is None or image_size is None or resize is None:
        channels, image_size, resize, fmt_note = infer_format(*sample_format(train_ds, img), channels, image_size,
                                                              resize)
        notes.append(fmt_note.replace("inferred from", "inferred from a sample of"))
    size = image_size if resize else None
    train_src = HFSource(train_ds, img, channels, size, name=f"{root}[{train_name}]")
    test_src = train_src if test_name is None else HFSource(test_ds, img, channels, size, name=f"{root}[{test_name}]")
    common = dataset_fields(
        class_names, channels, image_size, np.bincount(y_all[idx], minlength=num_classes), many_thr, few_thr, notes,
        {"source": root, "imbalance": imbalance, "profile": profile, "seed": seed, "image_column": img,
         "label_column": lab, "resize": resize},
        hflip=hflip,
    )
    test_part = (subset_source(test_src, test_idx), y_te) if test_idx is not None else (test_src, y_te)
    data = LTData(
        train=LTDataset("hf-lt", subset_source(train_src, idx), y_all[idx], **common),
        test=LTDataset("hf-lt-test", *test_part, **common),
        summary="; ".join(notes),
    )
    data.train.check_train()
    return data
