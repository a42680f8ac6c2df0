"""Using a trained model: `ltreg predict`, `ltreg eval` on new labelled folders and tables, and the reports
(top-5, per class, confusion matrix, ECE) -- on image folders written here from a tiny trained run."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import ltreg
from ltreg.cli import main
from ltreg.data.builders import digits_lt
from ltreg.data.views import build_pipeline
from ltreg.reports import (
    ECE_BINS,
    binned_confusion,
    confusion_csv,
    confusion_matrix,
    dumps,
    expected_calibration_error,
    json_safe,
    lt_report,
)
from tests.conftest import LTREG, ROOT


def strict(text: str) -> object:
    """json.loads that refuses NaN and infinities (as the Hub's card reader and other strict parsers do)."""
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few steps of CE on digits-LT (IF 20: 3 many / 3 medium / 4 few classes)."""
    out = tmp_path_factory.mktemp("predict") / "run"
    ltreg.train("ce", epochs=1, max_steps_per_epoch=3, batch_size=32, eval_batch_size=512, output_dir=str(out),
                quiet=True)
    return out


def digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """digits-LT's test images (uint8 [N, 1, 8, 8]) and labels, exactly as the run was tested on them."""
    test = digits_lt().test
    return torch.stack([test.source.load(i) for i in range(len(test))]), test.targets


def write_folder(root: Path, per_class: dict[str, list[int]], images: torch.Tensor) -> Path:
    """``root/<name>/<i>.png`` for each listed test image index."""
    for name, idx in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(images[i, 0].numpy(), "L").save(root / name / f"{i:03d}.png")
    return root


def by_class(labels: torch.Tensor, classes: list[int], n: int) -> dict[int, list[int]]:
    return {c: torch.nonzero(labels == c).flatten()[:n].tolist() for c in classes}


# -- predict ---------------------------------------------------------------------------------------------------


def test_predict_matches_the_model_on_its_own_test_transform(run: Path, tmp_path: Path) -> None:
    images, labels = digit_images()
    pick = by_class(labels, list(range(10)), 2)
    folder = write_folder(tmp_path / "imgs", {str(c): idx for c, idx in pick.items()}, images)
    preds = ltreg.predict(run, folder, top_k=3, batch_size=4)
    assert [p.path for p in preds] == sorted(str(folder / str(c) / f"{i:03d}.png") for c, idx in pick.items()
                                             for i in idx)  # found recursively, in path order
    model = ltreg.from_pretrained(run)
    test = digits_lt().test
    view = build_pipeline("none", test)
    for p in preds:
        i = int(Path(p.path).stem)
        with torch.no_grad():
            expected = model.predict(view(images[i]).unsqueeze(0)).softmax(1)[0]
        top = expected.topk(3)
        assert [c.index for c in p.top] == top.indices.tolist()
        assert [c.probability for c in p.top] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert p.label == str(p.top[0].index) and p.probability == p.top[0].probability
        assert p.top[0].probability >= p.top[1].probability >= p.top[2].probability


def test_cli_predict_writes_csv_and_json_and_json_stdout_alone(run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = digit_images()
    folder = write_folder(tmp_path / "imgs", {"x": [0, 1, 2]}, images)
    code, out, _ = cli(["predict", str(run), str(folder / "x" / "000.png"), str(folder), "--top-k", "2",
                        "--output", str(tmp_path / "p.csv")], capsys)
    assert code == 0 and "wrote 4 predictions" in out
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 4 and rows[0]["path"].endswith("000.png") and "top2_probability" in rows[0]
    assert 0 < float(rows[0]["top1_probability"]) <= 1 and "top3_label" not in rows[0]
    code, out, _ = cli(["predict", str(run), str(folder), "--output", str(tmp_path / "p.json")], capsys)
    saved = strict((tmp_path / "p.json").read_text())
    assert code == 0 and saved["top_k"] == 5 and len(saved["predictions"]) == 3
    assert {"index", "label", "probability"} == set(saved["predictions"][0]["top"][0])
    code, out, err = cli(["predict", str(run), str(folder), "--json", "--top-k", "20"], capsys)
    assert code == 0 and len(strict(out)["predictions"][0]["top"]) == 10  # the model has 10 classes
    assert "lists them all" in err


def crops_by_hand(img: torch.Tensor, s: int, expand: int, mean: float, std: float) -> torch.Tensor:
    """LIFT's five test-time crops, cut by index: the image resized to s + expand, its four corners and centre."""
    from torchvision.transforms.v2 import functional as TF
    big = TF.resize(img, [s + expand], antialias=True)
    h, w = big.shape[-2:]
    at = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), (int(round((h - s) / 2)), int(round((w - s) / 2)))]
    return (torch.stack([big[..., t:t + s, x:x + s] for t, x in at]).float() / 255 - mean) / std


def test_predict_with_tta_averages_the_logits_of_the_crops(run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = digit_images()
    idx = [0, 5, 9, 17]
    folder = write_folder(tmp_path / "imgs", {"x": idx}, images)
    model = ltreg.from_pretrained(run)
    test = digits_lt().test
    five = ltreg.predict(run, folder, top_k=10, tta="fivecrop")
    plain = ltreg.predict(run, folder, top_k=10)
    centre = ltreg.predict(run, folder, top_k=10, tta="center")
    assert {p.views for p in five} == {"fivecrop"} and {p.views for p in plain} == {"center"}
    assert plain == centre  # the run recorded the centre view: the default is what it records
    for p, q, i in zip(five, plain, idx):
        with torch.no_grad():
            x = crops_by_hand(images[i], test.image_size, 1, test.mean[0], test.std[0])  # 24/224 of 8 px: 1
            want = model.predict(x).mean(0).softmax(0)
            one = model.predict(build_pipeline("none", test)(images[i]).unsqueeze(0)).softmax(1)[0]
        assert [c.index for c in p.top] == want.topk(10).indices.tolist()
        assert [c.probability for c in p.top] == pytest.approx(want.topk(10).values.tolist(), abs=1e-5)
        assert [c.probability for c in q.top] == pytest.approx(one.topk(10).values.tolist(), abs=1e-5)
    assert any(p.top != q.top for p, q in zip(five, plain))  # the crops are not the centre view
    # a model whose card records a view set predicts with it unless told otherwise
    loaded = ltreg.inference.load_model(run)
    loaded.card.metrics["eval_views"] = {"name": "fivecrop", "views": 5}
    assert ltreg.predict(loaded, folder, top_k=10) == five
    assert ltreg.predict(loaded, folder, top_k=10, tta="center") == plain
    code, out, err = cli(["predict", str(run), str(folder), "--tta", "fivecrop", "--json"], capsys)
    assert code == 0 and strict(out)["views"] == "fivecrop" and "view set fivecrop" in err
    code, out, _ = cli(["predict", str(run), str(folder), "--tta", "fivecrop", "--output", str(tmp_path / "p.csv")],
                       capsys)
    assert code == 0 and {r["views"] for r in csv.DictReader(open(tmp_path / "p.csv"))} == {"fivecrop"}
    # mirrors only where the model's own metrics used them: digits' labels change under a flip
    code, _, err = cli(["predict", str(run), str(folder), "--tta", "tencrop"], capsys)
    assert code == 2 and "use fivecrop" in err


def test_predict_refuses_an_unknown_view_set_before_any_work(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # neither the model nor the image exists: the name is checked first
    code, _, err = cli(["predict", str(tmp_path / "no-model"), str(tmp_path / "no.png"), "--tta", "sevencrop"],
                       capsys)
    assert code == 2 and "sevencrop" in err and "fivecrop" in err and "does not exist" not in err


def test_predict_refuses_what_it_cannot_read(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["predict", str(run), str(tmp_path / "nope.png")], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli(["predict", str(run), str(tmp_path / "empty")], capsys)
    assert code == 2 and "holds no image files" in err
    code, _, err = cli(["predict", str(run), str(tmp_path), "--top-k", "0"], capsys)
    assert code == 2 and "--top-k must be" in err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, _, err = cli(["predict", str(run), str(tmp_path / "bad.png")], capsys)
    assert code == 2 and "cannot decode image" in err and "bad.png" in err


# -- eval on new labelled data ------------------------------------------------------------------------------


def test_eval_new_folder_with_a_missing_and_an_extra_class(run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Classes 0..8 present with 3 images each (9 missing), plus 'zebra' (4 images) the model does not know."""
    images, labels = digit_images()
    pick = by_class(labels, list(range(9)), 3)
    layout = {str(c): idx for c, idx in pick.items()} | {"zebra": by_class(labels, [9], 4)[9]}
    folder = write_folder(tmp_path / "new", layout, images)
    code, out, err = cli(["eval", str(run), "--data-root", str(folder), "--per-class", "--output-dir",
                          str(tmp_path / "rep")], capsys)
    assert code == 0, err
    assert f"scored: image folder {folder} (flat): every image of its class folders, nothing held out" in out
    assert "27 images in 9 of the model's 10 classes" in out
    assert "classes of the model without images here (1): 9" in out
    assert "not scored: 4 image(s) of 1 class(es) the model does not know: zebra (4)" in out
    assert "| All      |    9/10 |" in out and "| class |  train |" in out
    report = strict((tmp_path / "rep" / "report.json").read_text())
    assert report["data"]["missing_classes"] == ["9"] and report["data"]["extra_classes"] == {"zebra": 4}
    assert report["data"]["images"] == 27 and report["data"]["unknown_images"] == 4
    per_class = {c["name"]: c for c in report["per_class"]}
    assert per_class["9"]["images"] == 0 and per_class["9"]["top1"] is None and per_class["0"]["images"] == 3
    assert [c["train_count"] for c in report["per_class"]] == sorted(c["train_count"] for c in report["per_class"])[::-1]
    # the confusion matrix agrees with the model's own predictions on those 27 images
    model = ltreg.from_pretrained(run)
    view = build_pipeline("none", digits_lt().test)
    idx = [i for c in range(9) for i in pick[c]]
    with torch.no_grad():
        pred = model.predict(torch.stack([view(images[i]) for i in idx])).argmax(1)
    rows = list(csv.reader(open(tmp_path / "rep" / "confusion.csv")))
    head = rows[0][1:]
    matrix = {r[0]: dict(zip(head, map(int, r[1:]))) for r in rows[1:]}
    for c in range(9):
        got = pred[[k for k, i in enumerate(idx) if i in pick[c]]]
        for p in range(10):
            assert matrix[str(c)][str(p)] == int((got == p).sum()), (c, p)
    assert sum(matrix["9"].values()) == 0 and (tmp_path / "rep" / "confusion.png").stat().st_size > 1000
    assert report["metrics"]["top1"] == pytest.approx(100 * float((pred == labels[idx]).double().mean()), abs=1e-3)


def test_eval_json_stdout_is_json_alone(run: Path, tmp_path: Path) -> None:
    """In a real process, so that anything a library prints on stdout would show."""
    images, labels = digit_images()
    folder = write_folder(tmp_path / "new", {str(c): idx for c, idx in by_class(labels, [0, 1, 6], 2).items()}, images)
    proc = subprocess.run([*LTREG, "eval", str(run), "--data-root", str(folder), "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = strict(proc.stdout)
    assert report["data"]["images"] == 6 and report["metrics"]["num_tested"] == 3
    assert report["groups"]["medium"]["top1"] is None and "none of the 3 medium-shot" in report["groups"]["medium"]["reason"]
    assert "| All" in proc.stderr and "| All" not in proc.stdout


def test_eval_split_layout_scores_test_and_names_it(run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = digit_images()
    pick = {str(c): idx for c, idx in by_class(labels, [0, 1], 2).items()}
    write_folder(tmp_path / "set" / "train", pick, images)
    write_folder(tmp_path / "set" / "val", {"0": pick["0"][:1], "1": pick["1"][:1]}, images)
    code, out, _ = cli(["eval", str(run), "--data-root", str(tmp_path / "set")], capsys)
    assert code == 0 and "(split layout): val/ (it has no test/ folder)" in out and "2 images in 2 of" in out
    code, out, _ = cli(["eval", str(run), "--data-root", str(tmp_path / "set"), "--split", "train"], capsys)
    assert code == 0 and "(split layout): train/" in out and "4 images in 2 of" in out


def test_eval_a_datasets_table(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = digit_images()
    idx = [i for ids in by_class(labels, [2, 3], 3).values() for i in ids]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["2", "3", "cat"])})
    rows = {"image": [Image.fromarray(images[i, 0].numpy(), "L") for i in idx] + [Image.new("L", (8, 8))],
            "label": [0] * 3 + [1] * 3 + [2]}
    datasets.DatasetDict(test=datasets.Dataset.from_dict(rows, features=feats)).save_to_disk(str(tmp_path / "tbl"))
    code, out, _ = cli(["eval", str(run), "--data-root", str(tmp_path / "tbl")], capsys)
    assert code == 0 and f"datasets table {tmp_path / 'tbl'}: split 'test'" in out
    assert "6 images in 2 of the model's 10 classes" in out and "cat (1)" in out


def test_eval_refusals_and_exit_codes(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images, labels = digit_images()
    folder = write_folder(tmp_path / "other", {"Cat": [0], "dog": [1]}, images)
    code, _, err = cli(["eval", str(run), "--data-root", str(folder)], capsys)
    assert code == 2 and "none of the 2 images" in err and "matched by name" in err
    code, _, err = cli(["eval", str(run), "--data-root", str(tmp_path / "absent")], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = cli(["eval", str(run), "--data-root", str(folder), "--data-arg", "n_max=3"], capsys)
    assert code == 2 and "pass --dataset NAME" in err
    code, _, err = cli(["eval", str(tmp_path / "no-model")], capsys)
    assert code == 1 and "neither a model folder nor a Hub repo id" in err


# -- runs whose groups are empty write valid JSON; a flat folder's hold-out is named --------------------------


def test_no_few_classes_write_null_with_a_reason_not_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.RandomState(0)
    root = tmp_path / "flat"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.randint(0, 256, (8, 8), dtype=np.uint8), "L").save(root / name / f"{i}.png")
    out = tmp_path / "run"
    ltreg.train("ce", dataset="imagefolder-lt", data_root=str(root), epochs=1, max_steps_per_epoch=1, batch_size=8,
                output_dir=str(out), quiet=True)
    metrics = strict((out / "metrics.json").read_text())
    config = strict((out / "config.json").read_text())
    assert metrics["num_few"] == 0 and metrics["few"] is None and "no class has fewer than" in metrics["few_reason"]
    assert config["ltreg"]["metrics"]["few"] is None
    assert metrics["top5"] is None and "2 classes" in metrics["top5_reason"]
    capsys.readouterr()
    # the recorded flat folder, named again (a recorded path is never read): its hold-out, said so
    code, text, _ = cli(["eval", str(out), "--data-root", str(root)], capsys)
    assert code == 0 and "flat: test = 0.2 of each class held out" in text and "4 images in 2 of" in text
    code, text, _ = cli(["eval", str(out), "--data-root", str(root)], capsys)  # the same folder given again
    assert code == 0 and "held out" in text and "4 images in 2 of" in text
    import shutil

    shutil.copytree(root, tmp_path / "copy")  # another folder: every image scored
    code, text, _ = cli(["eval", str(out), "--data-root", str(tmp_path / "copy")], capsys)
    assert code == 0 and "nothing held out" in text and "20 images in 2 of" in text


# -- the metrics against hand computations ---------------------------------------------------------------------


def test_confusion_matrix_against_a_hand_count() -> None:
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([0, 1, 0, 1, 0, 2, 0, 0, 1])
    hand = [[2, 1, 0],
            [1, 1, 0],
            [2, 1, 1]]
    assert confusion_matrix(preds, targets, 3).dense().tolist() == hand
    logits = torch.nn.functional.one_hot(preds, 3).float() * 5
    report = lt_report(logits, targets, torch.tensor([3, 50, 30]), 40, 10, ["x", "y", "z"])
    rows = list(csv.reader(confusion_csv(report).splitlines()))  # head -> tail: y (50), z (30), x (3)
    assert rows[0] == ["true \\ predicted", "y", "z", "x"]
    assert rows[1:] == [["y", "1", "0", "1"], ["z", "1", "1", "2"], ["x", "1", "0", "2"]]
    z = report.per_class[2]
    assert (z.images, z.top1, z.confused_with, z.confused_share) == (4, 25.0, "x", 50.0)
    assert (report.groups["many"].top1, report.groups["few"].top1) == (50.0, pytest.approx(200 / 3, abs=1e-3))
    cells, bins = binned_confusion(report, max_cells=2)  # 3 classes in 2 bins of ranks: [y, z] and [x]
    assert bins == [(0, 1), (2, 2)]
    assert cells.tolist() == [[3 / 6, 3 / 6], [1 / 3, 2 / 3]]


def test_expected_calibration_error_against_a_hand_computation() -> None:
    # confidences 0.95 (right), 0.95 (wrong), 0.55 (right), 0.30 (wrong): bins (14/15, 1], (8/15, 9/15], (4/15, 5/15]
    probs = torch.tensor([[0.95, 0.05, 0.0], [0.95, 0.05, 0.0], [0.45, 0.55, 0.0], [0.30, 0.30, 0.40]])
    targets = torch.tensor([0, 1, 1, 0])
    hand = (2 / 4) * abs(0.5 - 0.95) + (1 / 4) * abs(1.0 - 0.55) + (1 / 4) * abs(0.0 - 0.40)
    assert expected_calibration_error(probs, targets) == pytest.approx(100 * hand, abs=1e-3)
    edge = torch.tensor([[1 / 15 * 8, 1 - 8 / 15]])  # exactly on a bin edge: the lower bin (upper-inclusive bins)
    assert expected_calibration_error(edge, torch.tensor([0])) == pytest.approx(100 * (1 - 8 / 15), abs=1e-3)
    assert ECE_BINS == 15


def test_top5_and_groups_and_strict_json() -> None:
    c = 8
    targets = torch.arange(c)
    logits = torch.zeros(c, c)
    for t in range(c):  # class t at rank t % 7 (0: top-1): top-1 for t = 0 and 7, top-5 for t % 7 < 5
        others = [k for k in range(c) if k != t]
        order = others[: t % 7] + [t] + others[t % 7:]
        logits[t, order] = torch.arange(c, 0, -1).float()
    counts = torch.tensor([200, 150, 50, 40, 30, 10, 5, 3])
    report = lt_report(logits, targets, counts, 100, 20)
    assert report.groups["all"].top1 == 25.0 and report.groups["all"].top5 == pytest.approx(100 * 6 / 8)
    assert (report.groups["many"].top1, report.groups["many"].top5) == (50.0, 100.0)  # classes 0, 1
    assert (report.groups["medium"].top1, report.groups["medium"].top5) == (0.0, 100.0)  # ranks 2, 3, 4
    few = report.groups["few"]  # classes 5, 6, 7 at ranks 5, 6, 0: only 7 within the top 5
    assert few.top1 == few.top5 == pytest.approx(100 / 3, abs=1e-3)
    m = report.metrics_dict()
    assert strict(dumps(m))["num_medium"] == 3 and m["ece_bins"] == 15
    none = lt_report(logits, targets, torch.full((c,), 500), 100, 20)
    text = dumps(none.metrics_dict())
    assert strict(text)["few"] is None and "no class has fewer than 20" in strict(text)["few_reason"]
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})
    assert json_safe({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}}) == {
        "a": None, "a_reason": "not a finite number (nan)", "b": [1.0, None], "c": {"d": 2}}


def test_a_malformed_recorded_transform_is_refused(run: Path, tmp_path: Path) -> None:
    """config.json is data (perhaps from the Hub): an absurd image size or a zero std never reaches a resize."""
    import shutil

    from ltreg.errors import CheckpointError
    from ltreg.files import write_manifest
    from ltreg.layout import MANIFEST, MODEL_FILES

    for field, value in (("image_size", 10**9), ("std", [0.0]), ("mean", ["x"])):
        folder = tmp_path / field
        shutil.copytree(run, folder, ignore=shutil.ignore_patterns("checkpoints", "manifest.json"))
        config = json.loads((folder / "config.json").read_text())
        config["ltreg"]["dataset"][field] = value
        (folder / "config.json").write_text(json.dumps(config))
        write_manifest(folder, "model", [f for f in MODEL_FILES if f != MANIFEST and (folder / f).is_file()])
        with pytest.raises(CheckpointError, match="recorded preprocessing of this model is malformed"):
            ltreg.predict(folder, tmp_path)
