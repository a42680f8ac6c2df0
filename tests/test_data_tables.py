"""hf-lt on real tables: parquet written by pyarrow ({bytes, path} image structs), arrow files,
``save_to_disk`` folders and a Hub id served by the test Hub server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ltreg.config import TrainConfig
from ltreg.data.build import build_data
from ltreg.data.hf import hf_lt
from ltreg.errors import DataError, DataLayoutError, ImageDecodeError

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer, hub_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.RandomState(11)


def _png(size: int = 16, mode: str = "RGB") -> bytes:
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buf = io.BytesIO()
    Image.fromarray(RNG.randint(0, 256, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def _rows(counts: list[int], names: list[str] | None = None, size: int = 16) -> dict[str, list]:
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    images = [{"bytes": _png(size), "path": f"img{i}.png"} for i in range(len(labels))]
    return {"image": images, "label": [names[c] for c in labels] if names else labels}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def test_parquet_written_by_pyarrow_with_bytes_path_structs(tmp_path: Path) -> None:
    """The user's crash: ``min() arg is an empty sequence`` on a pandas / pyarrow parquet folder."""
    root = tmp_path / "pq"
    root.mkdir()
    pq.write_table(pa.table(_rows([12, 6, 3])), root / "train-00000-of-00001.parquet")
    pq.write_table(pa.table(_rows([2, 2, 2])), root / "test-00000-of-00001.parquet")
    data = build_data(TrainConfig(dataset="hf-lt", data_root=str(root)).data_args())
    assert data.train.class_counts.tolist() == [12, 6, 3] and data.test.class_counts.tolist() == [2, 2, 2]
    assert (data.train.channels, data.train.image_size) == (3, 16)
    assert data.train.source.load(4).shape == (3, 16, 16) and data.test.source.load(5).shape == (3, 16, 16)
    assert "image column 'image', label column 'label' (by name) (cast to Image from a {bytes, path} struct)" in data.summary
    assert "thresholds many > 2 / few < 0" in data.summary and data.train.info["image_column"] == "image"


def test_string_labels_and_only_a_train_split(tmp_path: Path) -> None:
    root = tmp_path / "one"
    root.mkdir()
    names = ["zebra", "ant", "moth"]
    pq.write_table(pa.table(_rows([10, 5, 5], names)), root / "data.parquet")
    data = hf_lt(str(root), test_fraction=0.2)
    assert data.train.class_names == ["ant", "moth", "zebra"]  # class_encode_column: sorted
    assert data.train.class_counts.tolist() == [4, 4, 8] and data.test.class_counts.tolist() == [1, 1, 2]
    assert "string labels encoded" in data.summary and "no test split" in data.summary


def test_image_paths_column_and_large_string_labels(tmp_path: Path) -> None:
    paths = []
    for i in range(8):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.open(io.BytesIO(_png(10, "L"))).save(paths[-1])
    (tmp_path / "pq").mkdir()
    labels = pa.array(["b", "a"] * 4, type=pa.large_string())
    pq.write_table(pa.table({"image": paths, "label": labels}), tmp_path / "pq" / "train.parquet")
    data = hf_lt(str(tmp_path / "pq"), test_fraction=0.25)
    assert data.train.class_names == ["a", "b"] and data.train.channels == 1 and data.train.image_size == 10
    assert "cast to Image from" in data.summary and data.test.source.load(0).shape == (1, 10, 10)


def test_arrow_files_and_save_to_disk(tmp_path: Path) -> None:
    table = {"train": pa.table(_rows([6, 3])), "test": pa.table(_rows([2, 2]))}
    (tmp_path / "arrow").mkdir()
    for split, t in table.items():
        with pa.ipc.new_stream(str(tmp_path / "arrow" / f"{split}.arrow"), t.schema) as writer:
            writer.write_table(t)
    from_arrow = hf_lt(str(tmp_path / "arrow"))
    feats = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["p", "q"])})
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"img": [Image.open(io.BytesIO(r["bytes"])) for r in _rows([6, 3])["image"]],
                                          "y": [0] * 6 + [1] * 3}, features=feats),
        validation=datasets.Dataset.from_dict({"img": [Image.open(io.BytesIO(_png()))] * 2, "y": [0, 1]},
                                              features=feats),
    ).save_to_disk(str(tmp_path / "saved"))
    saved = hf_lt(str(tmp_path / "saved"))
    assert from_arrow.train.class_counts.tolist() == saved.train.class_counts.tolist() == [6, 3]
    assert saved.train.class_names == ["p", "q"] and "label column 'y' (ClassLabel)" in saved.summary
    assert "splits 'train' / 'validation'" in saved.summary and len(saved.test) == 2


def test_column_errors_are_named(tmp_path: Path) -> None:
    root = tmp_path / "pq"
    root.mkdir()
    rows = _rows([3, 3])
    pq.write_table(pa.table({"photo": rows["image"], "kind": rows["label"]}), root / "train.parquet")
    with pytest.raises(DataLayoutError, match="cannot tell the label column among photo .struct., kind .*label_column="):
        hf_lt(str(root))
    data = hf_lt(str(root), label_column="kind", test_fraction=0.34)
    assert "image column 'photo'" in data.summary and "label column 'kind' (given)" in data.summary
    with pytest.raises(DataLayoutError, match="folder /no/such/folder does not exist"):
        hf_lt("/no/such/folder")
    with pytest.raises(DataLayoutError, match="no split 'test'"):
        hf_lt(str(root), label_column="kind", test_split="test")
    pq.write_table(pa.table({"image": rows["image"], "label": [0, None, 1, 1, 0, 1]}), root / "train.parquet")
    with pytest.raises(DataError, match="1 row.s. with no 'label'"):
        hf_lt(str(root))


def test_undecodable_row_is_a_named_error(tmp_path: Path) -> None:
    root = tmp_path / "pq"
    root.mkdir()
    rows = _rows([4, 4])
    buf = io.BytesIO()
    Image.open(io.BytesIO(_png())).convert("RGB").save(buf, "JPEG")
    rows["image"][5] = {"bytes": buf.getvalue()[:-100], "path": "cut.jpg"}
    pq.write_table(pa.table(rows), root / "train.parquet")
    pq.write_table(pa.table(_rows([1, 1])), root / "test.parquet")
    data = hf_lt(str(root))
    with pytest.raises(ImageDecodeError, match=r"row 5 of .*\[train\] \(column 'image'\).*truncated.*Replace or drop"):
        data.train.source.load(5)


def test_hub_id_pushed_with_datasets_then_trained(tmp_path: Path) -> None:
    """``datasets.push_to_hub`` to the test Hub server, then build and train from the id in a fresh process."""
    script = """
        import io, json, os
        import datasets, numpy as np
        from PIL import Image
        rng = np.random.RandomState(0)
        feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
        def split(counts):
            labels = [c for c, n in enumerate(counts) for _ in range(n)]
            imgs = [Image.fromarray(rng.randint(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in labels]
            return datasets.Dataset.from_dict({"image": imgs, "label": labels}, features=feats)
        datasets.DatasetDict(train=split([10, 6, 4]), test=split([2, 2, 2])).push_to_hub("org/tiny-pets")
        import ltreg
        from ltreg.config import TrainConfig
        from ltreg.data.build import build_data
        data = build_data(TrainConfig(dataset="hf-lt", data_root="org/tiny-pets").data_args())
        res = ltreg.train("ce", dataset="hf-lt", data_root="org/tiny-pets", epochs=1, max_steps_per_epoch=1,
                          batch_size=8, output_dir=os.path.join(os.environ["WORK"], "run"))
        print(json.dumps({"counts": data.train.class_counts.tolist(), "names": data.train.class_names,
                          "size": data.train.image_size, "summary": data.summary, "classes": res.model.num_classes}))
    """
    with HubServer() as hub:
        env = {**os.environ, **hub_env(hub, tmp_path), "WORK": str(tmp_path)}
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert any(p.endswith(".parquet") for p in hub.repos["datasets/org/tiny-pets"])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["counts"] == [10, 6, 4] and out["names"] == ["a", "b", "c"] and out["size"] == 12
    assert out["classes"] == 3 and "label column 'label' (ClassLabel)" in out["summary"]
