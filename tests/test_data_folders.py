"""imagefolder-lt on real folders: split and flat layouts, ambiguous layouts refused, inferred settings, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ltreg
from ltreg.config import TrainConfig
from ltreg.data.build import build_data
from ltreg.data.folder import imagefolder_lt
from ltreg.errors import DataLayoutError, ImageDecodeError

RNG = np.random.RandomState(5)


def _img(size: int | tuple[int, int] = 16, mode: str = "RGB") -> Image.Image:
    w, h = (size, size) if isinstance(size, int) else size
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(RNG.randint(0, 256, shape, dtype=np.uint8), mode)


def make_folder(root: Path, counts: dict[str, int], size: int | tuple[int, int] = 16, mode: str = "RGB",
                ext: str = "png") -> Path:
    """``root/<class>/<i>.<ext>`` with ``counts[class]`` images (class "x/y" makes a nested path)."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _img(size, mode).save(root / name / f"{i}.{ext}")
    return root


def test_split_layout_is_read_as_splits_not_classes(tmp_path: Path) -> None:
    """The user's folder: root/train/<class>/ + root/val/<class>/ was a 2-class model named train / val."""
    root = tmp_path / "pets"
    make_folder(root / "train", {"cat": 12, "dog": 8, "eel": 4})
    make_folder(root / "val", {"cat": 3, "dog": 3, "eel": 3})
    data = build_data(TrainConfig(dataset="imagefolder-lt", data_root=str(root)).data_args())
    assert data.train.class_names == ["cat", "dog", "eel"] and data.train.num_classes == 3
    assert data.train.class_counts.tolist() == [12, 8, 4] and data.test.class_counts.tolist() == [3, 3, 3]
    assert data.val is None and all("/val/" in p for p in data.test.source.paths)
    assert "split folders" in data.summary and "train = train/" in data.summary
    assert data.summary.startswith("imagefolder-lt: 24 training images in 3 classes")


def test_train_val_test_layout_and_lt(tmp_path: Path) -> None:
    root = tmp_path / "set"
    make_folder(root / "train", {"a": 10, "b": 10, "c": 10})
    make_folder(root / "validation", {"a": 2, "b": 2, "c": 2})
    make_folder(root / "test", {"a": 1, "b": 1, "c": 1})
    data = imagefolder_lt(str(root), imbalance=5)
    assert data.train.class_counts.tolist() == [10, 4, 2]
    assert data.test.class_counts.tolist() == [1, 1, 1] and data.val.class_counts.tolist() == [2, 2, 2]
    assert data.test.name == "imagefolder-lt-test" and data.val.name == "imagefolder-lt-val"


def test_train_only_split_folder_holds_out_like_flat(tmp_path: Path) -> None:
    flat = imagefolder_lt(str(make_folder(tmp_path / "flat", {"a": 10, "b": 5})))
    split = imagefolder_lt(str(make_folder(tmp_path / "split" / "train", {"a": 10, "b": 5}).parent))
    assert flat.test.class_counts.tolist() == split.test.class_counts.tolist() == [2, 1]
    assert "train/ only" in split.summary and "flat" in flat.summary


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ({"train/a": 3, "train/b": 3, "cat": 3}, r"mixes split folders \(train\) with other folders \(cat\)"),
        ({"training/a": 3, "training/b": 3}, "training are not split names.*rename them to train"),
        ({"val/a": 3, "val/b": 3}, r"has val/ but no train/ folder; put the training images in .*/train/<class>/"),
        ({"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1, "validation/a": 1, "validation/b": 1},
         "has both val/ and validation/; keep one"),
        ({"train/a": 3, "train/b": 3, "val/a": 1, "val/c": 1}, r"val: its class folders differ .*missing: b; extra: c"),
        ({"only": 5}, r"only one class folder \('only'\).*pass it as the root"),
        ({"train/only": 5}, r"train has only one class folder"),
        ({"a": 3, "b": 0}, "class folder.s. with no readable image: b"),
        ({"train/a": 3, "train/b": 3, "test/a": 1, "test/b": 0}, "test: class folder.s. with no readable image: b"),
    ],
)
def test_ambiguous_layouts_are_named_errors(tmp_path: Path, layout: dict[str, int], match: str) -> None:
    root = make_folder(tmp_path / "root", layout)
    with pytest.raises(DataLayoutError, match=match) as err:
        imagefolder_lt(str(root))
    assert str(tmp_path / "root") in str(err.value)


def test_a_class_named_like_a_split_needs_layout_flat(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "vehicles", {"bus": 3, "car": 3, "train": 3})
    with pytest.raises(DataLayoutError, match="if these are all class folders, pass layout='flat'"):
        imagefolder_lt(str(root))
    assert imagefolder_lt(str(root), layout="flat").train.class_names == ["bus", "car", "train"]
    with pytest.raises(DataLayoutError, match="no train/ folder"):
        imagefolder_lt(str(make_folder(tmp_path / "flat", {"a": 3, "b": 3})), layout="split")


def test_images_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "root" / "train").mkdir(parents=True)
    _img().save(tmp_path / "root" / "train" / "0.png")
    with pytest.raises(DataLayoutError, match="no class sub-folders.*move each into a folder named after its class"):
        imagefolder_lt(str(tmp_path / "root"))
    with pytest.raises(DataLayoutError, match="does not exist"):
        imagefolder_lt(str(tmp_path / "nowhere"))


# -- inferred settings --------------------------------------------------------------------------


def test_small_images_infer_size_channels_thresholds(tmp_path: Path) -> None:
    """Small images no longer default to 224 px: size, channels and thresholds come from the data."""
    data = imagefolder_lt(str(make_folder(tmp_path / "g", {"a": 50, "b": 20, "c": 5}, size=20, mode="L")))
    train = data.train
    assert (train.channels, train.image_size, train.mean, train.std) == (1, 20, (0.5,), (0.5,))
    assert train.source.image_size is None and train.source.load(0).shape == (1, 20, 20)
    assert (train.many_thr, train.few_thr) == (8, 1)  # largest class 40 (after the holdout): 40 / 5, 40 / 25
    assert "image_size 20 and channels 1 inferred from 75 images (all 20x20)" in data.summary
    assert "thresholds many > 8 / few < 1" in data.summary and train.info["inferred"] == data.summary
    given = imagefolder_lt(str(tmp_path / "g"), image_size=32, channels=3, resize=True, many_thr=30, few_thr=5)
    assert (given.train.image_size, given.train.channels, given.train.many_thr, given.train.few_thr) == (32, 3, 30, 5)
    assert given.train.source.load(0).shape == (3, 32, 32) and "inferred" not in given.summary


def test_mixed_small_sizes_are_resized_large_ones_capped(tmp_path: Path) -> None:
    root = tmp_path / "m"
    for i, size in enumerate([(12, 14), (20, 16), (30, 30), (16, 40)] * 3):
        (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        _img(size).save(root / "ab"[i % 2] / f"{i}.png")
    data = imagefolder_lt(str(root))
    assert data.train.image_size == 16 and data.train.source.image_size == 16
    assert {tuple(data.train.source.load(i).shape) for i in range(len(data.train))} == {(3, 16, 16)}
    assert "resized at load" in data.summary
    big = imagefolder_lt(str(make_folder(tmp_path / "big", {"a": 3, "b": 3}, size=(300, 260))))
    assert big.train.image_size == 224 and big.train.source.image_size is None


# -- bad files ----------------------------------------------------------------------------------


def test_truncated_jpeg_is_a_named_error_naming_the_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "j", {"a": 4, "b": 4}, size=24, ext="jpg")
    path = root / "b" / "2.jpg"
    path.write_bytes(path.read_bytes()[:-100])  # the end cut off: the header still reads
    data = imagefolder_lt(str(root), test_fraction=0.01)  # PIL's verify passes a truncated JPEG: found on decoding
    i = data.train.source.paths.index(str(path))
    with pytest.raises(ImageDecodeError, match=r"cannot decode image .*b/2\.jpg.*replace or delete it"):
        data.train.source.load(i)
    assert data.train.source.load(0).shape == (3, 24, 24)


def test_bad_folder_fails_before_training_writes(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    make_folder(root / "train", {"a": 3, "b": 3})
    make_folder(root / "val", {"a": 1, "c": 1})
    out = tmp_path / "run"
    with pytest.raises(DataLayoutError, match="class folders differ"):
        ltreg.train("ce", dataset="imagefolder-lt", data_root=str(root), output_dir=str(out), epochs=1)
    assert not out.exists() or not any(out.rglob("*"))


def test_train_on_split_folder_end_to_end(tmp_path: Path, tiny: dict) -> None:
    root = tmp_path / "pets"
    make_folder(root / "train", {"cat": 12, "dog": 8, "eel": 4}, size=12)
    make_folder(root / "val", {"cat": 2, "dog": 2, "eel": 2}, size=12)
    result = ltreg.train("ce", dataset="imagefolder-lt", data_root=str(root), output_dir=str(tmp_path / "run"),
                         **{**tiny, "epochs": 1, "max_steps_per_epoch": 1, "batch_size": 8})
    assert result.model.num_classes == 3 and len(result.metrics["per_class"]) == 3


def test_a_given_image_size_is_not_reported_as_inferred(tmp_path) -> None:
    from ltreg.data.infer import infer_format

    channels, size, resize, note = infer_format([(20, 20)] * 4, ["L"] * 4, image_size=16)
    assert (channels, size, resize) == (1, 16, False)
    assert note == "channels 1 inferred from 4 images (all 20x20); given: image_size 16"
