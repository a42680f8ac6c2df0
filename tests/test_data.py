"""Data builders: LDAM-DRW LT counts, CIFAR via `datasets`, Fashion-MNIST, image folders, split files, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from ltreg.data import builders as B
from ltreg.data.lt import LTDataset, TensorSource, class_split_sizes, lt_counts, make_lt_indices
from ltreg.errors import DataError

RNG = np.random.RandomState(123)


def _img(size: int = 32) -> Image.Image:
    return Image.fromarray(RNG.randint(0, 256, (size, size, 3), dtype=np.uint8))


def _formula(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    return [math.floor(n_max * imbalance ** (-i / (num_classes - 1))) for i in range(num_classes)]


# -- LT profile ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_max", "num_classes", "totals"),
    [(5000, 10, {100: 12406, 50: 13996, 10: 20431}), (500, 100, {100: 10847, 50: 12608, 10: 19573})],
)
def test_ldam_counts(n_max: int, num_classes: int, totals: dict[int, int]) -> None:
    targets = np.repeat(np.arange(num_classes), n_max)
    for imbalance, total in totals.items():
        idx = make_lt_indices(targets, num_classes, imbalance, seed=0)
        assert len(idx) == total
        assert np.bincount(targets[idx], minlength=num_classes).tolist() == _formula(
            n_max, num_classes, imbalance
        )
    assert class_split_sizes(torch.tensor(lt_counts(500, 100, 100)), 100, 20) == {
        "many": 35,
        "medium": 35,
        "few": 30,
    }


def test_indices_match_ldam_drw_code() -> None:
    """Same indices as LDAM-DRW's ``gen_imbalanced_data`` (global numpy seed, imb_factor = 1/IF)."""
    targets = np.random.RandomState(7).permutation(np.repeat(np.arange(10), 300))
    state = np.random.get_state()
    np.random.seed(3)
    ref = []
    for c, n in enumerate(int(300 * 0.02 ** (c / 9.0)) for c in range(10)):
        idx = np.where(targets == c)[0]
        np.random.shuffle(idx)
        ref.append(idx[:n])
    np.random.set_state(state)
    assert np.array_equal(make_lt_indices(targets, 10, 50, seed=3), np.concatenate(ref))


# -- CIFAR through `datasets` ------------------------------------------------------------------


def _fake_cifar(path: Path, num_classes: int, n_train: int, n_test: int, label: str) -> str:
    feats = datasets.Features({"img": datasets.Image(), label: datasets.ClassLabel(num_classes=num_classes)})

    def split(n: int) -> datasets.Dataset:
        labels = np.random.RandomState(n).permutation(np.repeat(np.arange(num_classes), n)).tolist()
        return datasets.Dataset.from_dict({"img": [_img() for _ in labels], label: labels}, features=feats)

    datasets.DatasetDict(train=split(n_train), test=split(n_test)).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _fake_cifar(tmp_path_factory.mktemp("c10"), 10, 50, 10, "label")


def test_cifar10_lt_fake(cifar10_dir: str) -> None:
    data = B.cifar10_lt(cifar10_dir, imbalance=10, n_max=50)
    assert data.train.class_counts.tolist() == _formula(50, 10, 10)
    assert data.test.class_counts.tolist() == [10] * 10
    assert data.train.source.load(0).shape == (3, 32, 32) and data.train.source.load(0).dtype == torch.uint8
    assert (data.train.channels, data.train.image_size, data.train.many_thr, data.train.few_thr) == (
        3,
        32,
        100,
        20,
    )
    assert data.train.info["seed"] == 0 and data.train.info["imbalance"] == 10
    again, other = (
        B.cifar10_lt(cifar10_dir, imbalance=10, n_max=50),
        B.cifar10_lt(cifar10_dir, imbalance=10, n_max=50, seed=1),
    )
    assert torch.equal(again.train.source.images, data.train.source.images)
    assert not torch.equal(other.train.source.images, data.train.source.images)


def test_cifar10_lt_from_parquet(cifar10_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    dd = datasets.load_from_disk(cifar10_dir)
    for split in ("train", "test"):
        dd[split].to_parquet(str(tmp_path / f"{split}-00000-of-00001.parquet"))
    ref, data = (
        B.cifar10_lt(cifar10_dir, imbalance=5, n_max=50),
        B.cifar10_lt(str(tmp_path), imbalance=5, n_max=50),
    )
    assert torch.equal(data.train.source.images, ref.train.source.images)
    assert torch.equal(data.test.targets, ref.test.targets)


def test_cifar100_lt_fine_label(tmp_path: Path) -> None:
    root = _fake_cifar(tmp_path / "c100", 100, 5, 1, "fine_label")
    data = B.cifar100_lt(root, imbalance=5, n_max=5)
    assert data.train.class_counts.tolist() == _formula(5, 100, 5)
    assert len(data.test) == 100 and data.test.class_counts.eq(1).all()


def test_hf_lt_keeps_natural_split(cifar10_dir: str) -> None:
    data = B.hf_lt(cifar10_dir)
    assert len(data.train) == 500 and data.train.channels == 3 and data.train.image_size == 32
    assert data.test.source.load(3).shape == (3, 32, 32)
    assert B.hf_lt(cifar10_dir, imbalance=2).train.class_counts.tolist() == _formula(50, 10, 2)
    with pytest.raises(DataError, match="no split 'validation'"):
        B.hf_lt(cifar10_dir, test_split="validation")
    with pytest.raises(DataError, match="no label column 'y'"):
        B.hf_lt(cifar10_dir, label_column="y")


# -- bundled and packaged data -----------------------------------------------------------------


def test_digits_lt() -> None:
    data = B.digits_lt(imbalance=20)
    counts = data.train.class_counts
    assert counts.tolist() == _formula(140, 10, 20) == [140, 100, 71, 51, 36, 26, 19, 13, 9, 7]
    assert len(data.train) == 472  # the formula's sum; 473 was a miscount
    assert len(data.test) == 300 and data.test.class_counts.eq(30).all()
    assert class_split_sizes(counts, data.train.many_thr, data.train.few_thr) == {
        "many": 3,
        "medium": 3,
        "few": 4,
    }


@pytest.mark.skipif(
    not Path(B.FASHION_DIR, "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_lt_debian() -> None:
    data = B.fashion_mnist_lt(imbalance=100)
    assert data.train.class_counts.tolist() == _formula(6000, 10, 100)
    assert len(data.test) == 10000 and data.test.class_counts.eq(1000).all()
    assert data.train.source.load(0).shape == (1, 28, 28)
    assert class_split_sizes(data.train.class_counts, data.train.many_thr, data.train.few_thr) == {
        "many": 4,
        "medium": 3,
        "few": 3,
    }
    mean = data.test.source.images.float().mean().item() / 255
    assert abs(mean - data.test.mean[0]) < 0.01


def test_fashion_mnist_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        B.fashion_mnist_lt(root=str(tmp_path))


# -- image folders -----------------------------------------------------------------------------


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            _img(12 + i).save(root / name / f"{i}.png")
    return root


def test_imagefolder_bad_image(tmp_path: Path) -> None:
    root = _folder(tmp_path / "f", {"a": 10, "b": 6, "c": 4})
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "b" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match="skipped 1"):
        data = B.imagefolder_lt(str(root), resize=True, image_size=16)
    assert data.train.info["skipped"] == 1 and data.train.info["skipped_files"][0].endswith("broken.jpg")
    assert data.test.class_counts.tolist() == [2, 1, 1] and data.train.class_counts.tolist() == [8, 5, 3]
    assert data.train.class_names == ["a", "b", "c"] and data.train.source.load(0).shape == (3, 16, 16)
    with pytest.raises(DataError, match="broken.jpg"):
        B.imagefolder_lt(str(root), on_bad_image="error")


def test_imagefolder_lt_profile_and_empty_class(tmp_path: Path) -> None:
    data = B.imagefolder_lt(str(_folder(tmp_path / "f", {"a": 10, "b": 10, "c": 10})), imbalance=4)
    assert data.test.class_counts.tolist() == [2, 2, 2] and data.train.class_counts.tolist() == [8, 4, 2]
    with pytest.raises(DataError, match="no readable image: b"):
        B.imagefolder_lt(str(_folder(tmp_path / "g", {"a": 3, "b": 0})))


# -- split-file benchmarks ---------------------------------------------------------------------


def _split_files(root: Path, train: list[int], test: list[int], prefix: str = "") -> None:
    lines = {"train": [], "test": []}
    for split, labels in (("train", train), ("test", test)):
        for i, y in enumerate(labels):
            rel = Path(split, f"n{y}", f"{i}.jpg")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            _img(20).save(root / rel)
            lines[split].append(f"{prefix}{rel} {y}")
    for split, text in lines.items():
        (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(text) + "\n")


def test_imagenet_lt_fake(tmp_path: Path) -> None:
    _split_files(tmp_path, [0, 0, 0, 0, 1, 1, 2], [0, 1, 2], prefix="/")
    data = B.imagenet_lt(str(tmp_path))
    assert data.train.class_counts.tolist() == [4, 2, 1] and data.test.class_counts.tolist() == [1, 1, 1]
    assert data.train.class_names == ["n0", "n1", "n2"] and data.val is None
    assert data.train.source.load(6).shape == (3, 20, 20)
    assert (data.train.image_size, data.train.many_thr, data.train.few_thr, data.train.info["imbalance"]) == (
        224,
        100,
        20,
        4.0,
    )
    with pytest.raises(DataError, match="fixed long-tailed split"):
        B.imagenet_lt(str(tmp_path), imbalance=100)
    with pytest.raises(DataError, match="not found; root= must be the image"):
        B.imagenet_lt(str(tmp_path / "elsewhere"), split_dir=str(tmp_path))


def test_split_files_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ImageNet_LT_train.txt.*OpenLongTailRecognition"):
        B.imagenet_lt(str(tmp_path))
    with pytest.raises(DataError, match="iNaturalist18_train.txt.*classifier-balancing"):
        B.inat2018(str(tmp_path))


# -- bad input ---------------------------------------------------------------------------------


def test_bad_imbalance(cifar10_dir: str) -> None:
    with pytest.raises(DataError, match="imbalance factor must be >= 1"):
        B.cifar10_lt(cifar10_dir, imbalance=0.5, n_max=50)
    with pytest.raises(DataError, match="leaves classes .* with no image"):
        B.cifar10_lt(cifar10_dir, imbalance=100, n_max=50)
    with pytest.raises(DataError, match="unknown LT profile 'zipf'"):
        B.digits_lt(profile="zipf")


def test_labels_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\], found 0..5"):
        LTDataset(
            "toy",
            TensorSource(torch.zeros(2, 1, 4, 4, dtype=torch.uint8)),
            torch.tensor([0, 5]),
            3,
            ["a", "b", "c"],
            1,
            4,
        )
    _split_files(tmp_path, [0, 1], [0, -1])
    with pytest.raises(DataError, match="imagenet-lt-test: labels must lie in"):
        B.imagenet_lt(str(tmp_path))


def test_empty_training_class(tmp_path: Path) -> None:
    _split_files(tmp_path, [0, 0, 2], [0, 1, 2])
    with pytest.raises(DataError, match=r"imagenet-lt: 1 class\(es\) have no training images: 1 \(n1\)"):
        B.imagenet_lt(str(tmp_path))
