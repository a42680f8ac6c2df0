"""Builders of long-tailed benchmarks, registered in the ``ltreg.datasets`` group.

Each builder is ``fn(root=None, imbalance=..., profile="exp", seed=0, **kw) -> LTData`` and carries
its run defaults (``with_defaults``). Your own data: ``hf_lt`` (``ltreg.data.hf``) and
``imagefolder_lt`` (``ltreg.data.folder``), re-exported here.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltreg.data.build import with_defaults
from ltreg.data.folder import imagefolder_lt
from ltreg.data.hf import _labels, hf_lt, load_table, prepare
from ltreg.data.infer import IMAGENET_MEAN, IMAGENET_STD
from ltreg.data.lt import LTData, LTDataset, TensorSource, effective_imbalance, make_lt_indices
from ltreg.data.sources import FileSource, HFSource
from ltreg.errors import DataError

__all__ = ["cifar10_lt", "cifar100_lt", "digits_lt", "fashion_mnist_lt", "hf_lt", "imagefolder_lt", "imagenet_lt",
           "inat2018", "places_lt", "split_file_benchmark"]


@with_defaults(backbone="resnet8", epochs=30, batch_size=64, lr=0.05, weight_decay=5e-4)
def digits_lt(
    root: str | None = None,
    imbalance: float = 20.0,
    profile: str = "exp",
    seed: int = 0,
    test_per_class: int = 30,
    n_max: int = 140,
) -> LTData:
    """scikit-learn's bundled 8x8 digits, made long-tailed: the embedded default data.

    Per class, ``test_per_class`` images (seeded) form a balanced test set; the LT training set is
    drawn from the rest with the exponential profile (IF 20: 140 ... 7 images per class, 472 in all).
    Ten classes with at most 140 images need their own split thresholds: many > 60, few < 20
    (3 many / 3 medium / 4 few classes at IF 20).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.clip(digits.images * 16, 0, 255).astype(np.uint8)).unsqueeze(1)
    targets = np.asarray(digits.target, dtype=np.int64)
    rng = np.random.RandomState(seed)
    test_idx, pool_idx = [], []
    for c in range(10):
        idx = np.where(targets == c)[0]
        rng.shuffle(idx)
        test_idx.append(idx[:test_per_class])
        pool_idx.append(idx[test_per_class:])
    test_idx = np.sort(np.concatenate(test_idx))
    pool_idx = np.sort(np.concatenate(pool_idx))
    lt = pool_idx[make_lt_indices(targets[pool_idx], 10, imbalance, profile, n_max=n_max, seed=seed)]
    common = dict(
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        channels=1,
        image_size=8,
        allow_flip=False,
        mean=(0.30,),
        std=(0.38,),
        many_thr=60,
        few_thr=20,
    )
    info = {"source": "sklearn.datasets.load_digits", "imbalance": imbalance, "profile": profile, "seed": seed}
    src = TensorSource(images)
    train = LTDataset("digits-lt", src.subset(lt), torch.from_numpy(targets[lt]), info=info, **common)
    test = LTDataset("digits-test", src.subset(test_idx), torch.from_numpy(targets[test_idx]), info=info, **common)
    return LTData(train=train, test=test)


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _info(
    source: str, imbalance: float | None, profile: str | None, seed: int, **extra: Any
) -> dict[str, Any]:
    return {"source": source, "imbalance": imbalance, "profile": profile, "seed": seed, **extra}


def _pair(
    name: str,
    train: tuple[Any, Any],
    test: tuple[Any, Any],
    val: tuple[Any, Any] | None = None,
    **common: Any,
) -> LTData:
    """Train / test (/ val) LTDatasets sharing one description; the training set must have every class."""
    data = LTData(
        train=LTDataset(name, *train, **common),
        test=LTDataset(f"{name}-test", *test, **common),
        val=None if val is None else LTDataset(f"{name}-val", *val, **common),
    )
    data.train.check_train()
    return data


def _materialize(source: Any, idx: np.ndarray) -> TensorSource:
    """Decode ``idx`` of a lazy source into memory: small sets (CIFAR) train faster from one tensor."""
    return TensorSource(torch.stack([source.load(int(i)) for i in idx]))


# -- Fashion-MNIST -----------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    """An (optionally gzipped) uint8 IDX file, MNIST's format, parsed with numpy."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not a uint8 IDX file")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", raw[3], 4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(shape)


def _fashion_file(root: Path, stem: str) -> Path:
    for path in (root / f"{stem}.gz", root / stem):
        if path.is_file():
            return path
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}: run `apt-get install dataset-fashion-mnist` "
        f"(installs {FASHION_DIR}) or pass root= a folder with the four IDX files"
    )


@with_defaults(backbone="resnet8", epochs=30, batch_size=128, lr=0.1)
def fashion_mnist_lt(
    root: str | None = None,
    imbalance: float = 100.0,
    profile: str = "exp",
    seed: int = 0,
    n_max: int = 6000,
) -> LTData:
    """Real Fashion-MNIST (Debian ``dataset-fashion-mnist``): LDAM-DRW LT subset of the 60k train set, balanced 10k test.

    Thresholds scale with ``n_max`` as CIFAR-100-LT's 100 / 20 do with its 500 (n_max/5, n_max/25):
    many > 1200, few < 240 at n_max 6000, i.e. 4 many / 3 medium / 3 few classes at IF 100
    (6000 ... 60 images); the literature's 100 / 20 would leave 8 many / 2 medium / 0 few.
    """
    base = Path(root or FASHION_DIR)
    x_tr, y_tr, x_te, y_te = (
        _read_idx(_fashion_file(base, stem))
        for stem in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    )
    y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
    lt = make_lt_indices(y_tr, 10, imbalance, profile, n_max=n_max, seed=seed)
    images = torch.from_numpy(x_tr[lt].copy()).unsqueeze(1)
    return _pair(
        "fashion-mnist-lt",
        (TensorSource(images), y_tr[lt]),
        (TensorSource(torch.from_numpy(x_te.copy()).unsqueeze(1)), y_te),
        num_classes=10,
        class_names=FASHION_CLASSES,
        channels=1,
        image_size=28,
        allow_flip=True,
        mean=(0.2860,),
        std=(0.3530,),
        many_thr=n_max // 5,
        few_thr=n_max // 25,
        info=_info(str(base), imbalance, profile, seed, n_max=n_max),
    )


# -- Hugging Face `datasets` -------------------------------------------------------------------


def _cifar_lt(
    name: str,
    root: str,
    num_classes: int,
    imbalance: float,
    profile: str,
    seed: int,
    n_max: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> LTData:
    """CIFAR-LT exactly as LDAM-DRW (``make_lt_indices``), images decoded into memory."""
    dd = load_table(root)
    fine = "fine_label" if "fine_label" in next(iter(dd.values())).column_names else None  # CIFAR-100: not coarse
    dd, img, lab, class_names, _ = prepare(dd, None, fine)
    for split in ("train", "test"):
        if split not in dd:
            raise DataError(f"{root!r} has no split {split!r}; splits are {list(dd)}")
    train, test = dd["train"], dd["test"]
    y_tr, y_te = _labels(train, lab), _labels(test, lab)
    if len(class_names) != num_classes:
        raise DataError(f"{root!r}: {len(class_names)} classes in column {lab!r}, {name} needs {num_classes}")
    lt = make_lt_indices(y_tr, num_classes, imbalance, profile, n_max=n_max, seed=seed)
    return _pair(
        name,
        (_materialize(HFSource(train, img), lt), y_tr[lt]),
        (_materialize(HFSource(test, img), np.arange(len(y_te))), y_te),
        num_classes=num_classes,
        class_names=class_names,
        channels=3,
        image_size=32,
        allow_flip=True,
        mean=mean,
        std=std,
        info=_info(root, imbalance, profile, seed, n_max=n_max),
    )


CIFAR_DEFAULTS = dict(backbone="resnet32", epochs=200, batch_size=128, lr=0.1, weight_decay=2e-4, warmup_epochs=5)


@with_defaults(**CIFAR_DEFAULTS)
def cifar10_lt(
    root: str | None = None,
    imbalance: float = 100.0,
    profile: str = "exp",
    seed: int = 0,
    hf_id: str = "uoft-cs/cifar10",
    n_max: int = 5000,
) -> LTData:
    """CIFAR-10-LT (LDAM-DRW: IF 100/50/10 -> 12,406 / 13,996 / 20,431 images), balanced 10k test; thresholds 100 / 20."""
    return _cifar_lt(
        "cifar10-lt", root or hf_id, 10, imbalance, profile, seed, n_max, CIFAR10_MEAN, CIFAR10_STD
    )


@with_defaults(**CIFAR_DEFAULTS)
def cifar100_lt(
    root: str | None = None,
    imbalance: float = 100.0,
    profile: str = "exp",
    seed: int = 0,
    hf_id: str = "uoft-cs/cifar100",
    n_max: int = 500,
) -> LTData:
    """CIFAR-100-LT (LDAM-DRW: IF 100/50/10 -> 10,847 / 12,608 / 19,573 images), balanced 10k test; thresholds 100 / 20."""
    return _cifar_lt(
        "cifar100-lt", root or hf_id, 100, imbalance, profile, seed, n_max, CIFAR100_MEAN, CIFAR100_STD
    )


# -- split-file benchmarks: ImageNet-LT, Places-LT, iNaturalist 2018 ----------------------------


def _read_split(path: Path, image_root: Path) -> tuple[list[str], np.ndarray]:
    """Lines ``relative/path.jpg label`` as absolute paths under ``image_root`` and int labels."""
    paths, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        try:
            labels.append(int(parts[1]))
        except (IndexError, ValueError):
            raise DataError(f"{path}:{n}: expected 'relative/path.jpg label', got {line!r}") from None
        paths.append(str(image_root / parts[0].lstrip("/")))
    if not paths:
        raise DataError(f"{path} lists no images")
    return paths, np.asarray(labels, dtype=np.int64)


def _split_file_lt(
    name: str,
    root: str,
    split_dir: str | None,
    files: dict[str, str],
    hint: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    imbalance: float | None,
    profile: str | None,
    seed: int,
) -> LTData:
    """A fixed LT benchmark from its split files (train, test, optional val) and an image root."""
    if imbalance is not None or profile not in (None, "fixed"):
        raise DataError(f"{name} has a fixed long-tailed split: leave imbalance and profile unset")
    image_root, sdir = Path(root), Path(split_dir or root)
    required = [files["train"], files["test"]]
    missing = [f for f in required if not (sdir / f).is_file()]
    if missing:
        raise DataError(f"{name}: split file(s) {', '.join(missing)} not found in {sdir}; {hint}")
    parts = {}
    for split, fname in files.items():
        if (sdir / fname).is_file():
            paths, labels = _read_split(sdir / fname, image_root)
            if not Path(paths[0]).is_file():
                raise DataError(
                    f"{name}: image {paths[0]} (first line of {fname}) not found; root= must be the image "
                    f"folder that the split files' paths are relative to"
                )
            parts[split] = (FileSource(paths, 3), labels)
    num_classes = max(int(labels.max()) for _, labels in parts.values()) + 1
    first: dict[int, str] = {}
    for source, labels in parts.values():
        for path, label in zip(source.paths, labels.tolist()):
            first.setdefault(label, Path(path).parent.name)
    counts = np.bincount(parts["train"][1], minlength=num_classes)
    return _pair(
        name,
        parts["train"],
        parts["test"],
        parts.get("val"),
        num_classes=num_classes,
        class_names=[first.get(c, str(c)) for c in range(num_classes)],
        channels=3,
        image_size=224,
        allow_flip=True,
        mean=mean,
        std=std,
        many_thr=100,
        few_thr=20,
        info=_info(
            str(sdir),
            effective_imbalance(torch.from_numpy(counts)),
            "fixed",
            seed,
            image_root=str(image_root),
        ),
    )


OLTR_HINT = (
    "get them from the OLTR release (github.com/zhmiao/OpenLongTailRecognition-OLTR, data/{d}) or the "
    "PaCo / BCL repositories, and pass their folder as --data-arg split_dir=DIR (split_dir= in Python)"
)


def split_file_benchmark(
    name: str,
    files: dict[str, str],
    hint: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    doc: str,
    defaults: dict[str, Any],
) -> Callable[..., LTData]:
    """The builder of a fixed LT benchmark read from its split files (``_split_file_lt``), with its run defaults."""

    def builder(
        root: str,
        split_dir: str | None = None,
        imbalance: float | None = None,
        profile: str | None = None,
        seed: int = 0,
    ) -> LTData:
        return _split_file_lt(name, root, split_dir, files, hint, mean, std, imbalance, profile, seed)

    builder.__name__ = builder.__qualname__ = name.replace("-", "_")
    builder.__doc__ = doc
    return with_defaults(**defaults)(builder)


imagenet_lt = split_file_benchmark(
    "imagenet-lt",
    {"train": "ImageNet_LT_train.txt", "test": "ImageNet_LT_test.txt", "val": "ImageNet_LT_val.txt"},
    OLTR_HINT.format(d="ImageNet_LT"),
    IMAGENET_MEAN,
    IMAGENET_STD,
    "ImageNet-LT (1000 classes, 115.8K train, 50K balanced test, 20K val) from its split files; root = ImageNet-2012.",
    dict(backbone="resnet50", epochs=90, batch_size=256, lr=0.1),
)
places_lt = split_file_benchmark(
    "places-lt",
    {"train": "Places_LT_train.txt", "test": "Places_LT_test.txt", "val": "Places_LT_val.txt"},
    OLTR_HINT.format(d="Places_LT"),
    IMAGENET_MEAN,
    IMAGENET_STD,
    "Places-LT (365 classes, 62.5K train, 36.5K balanced test) from its split files; root = Places365-Standard.",
    # the protocol (Liu et al., OLTR 2019) fine-tunes an ImageNet-pretrained ResNet-152 (torchvision's weights)
    dict(backbone="resnet152.tv_in1k", pretrained=True, epochs=30, batch_size=256, lr=0.02),
)
inat2018 = split_file_benchmark(
    "inat2018",
    {"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"},
    "get them from github.com/facebookresearch/classifier-balancing (data/iNaturalist18) or the PaCo / BCL "
    "repositories, and pass their folder as --data-arg split_dir=DIR (split_dir= in Python)",
    INAT_MEAN,
    INAT_STD,
    "iNaturalist 2018 (8,142 classes, 437.5K train, the 24,426 val images as test); root holds train_val2018/.",
    dict(backbone="resnet50", epochs=90, batch_size=256, lr=0.1, weight_decay=1e-4),
)
