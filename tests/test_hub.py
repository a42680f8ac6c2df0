"""Hub artifacts: save -> push -> load round trips against the in-memory Hub, and local load errors.

Client scenarios run in subprocesses pointed at the server (`huggingface_hub` reads `HF_ENDPOINT`
when imported); each prints one JSON line last. Tensors travel through safetensors files in `tmp_path`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer, hub_env, run_client  # noqa: E402

import ltreg  # noqa: E402
from ltreg.card import RunCard  # noqa: E402
from ltreg.config import TrainConfig  # noqa: E402
from ltreg.evaluate import evaluate_pretrained  # noqa: E402
from ltreg.layout import HEADS_FILE, MODEL_FILES, PLOT_FILE, WEIGHTS_FILE  # noqa: E402
from ltreg.models.ltmodel import LTModel, LTModelConfig, from_pretrained, save_pretrained  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COUNTS = [120, 50, 18, 7, 3]


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        yield server




def fake_meta(method: str = "ce") -> dict[str, Any]:
    """What a run's `RunCard` records (as a dict), for a 5-class toy run."""
    return {
        "method": method, "citation": "He et al., Deep Residual Learning for Image Recognition, CVPR 2016",
        "bibtex": "@inproceedings{he2016resnet,\n  title = {Deep Residual Learning for Image Recognition},\n  year = {2016}\n}",
        "hparams": {"tau": 1.0}, "recipe": TrainConfig(method="ce", imbalance=40.0, seed=3).recipe_items(),
        "license": "apache-2.0",
        "dataset": {"name": "toy-lt", "info": {"profile": "exp", "imbalance": 40.0}, "class_counts": COUNTS,
                    "many_thr": 30, "few_thr": 10, "hub_id": "org/toy-lt",
                    "class_names": list("abcde"), "test_name": "toy-test", "image_size": 32, "mean": [0.5] * 3,
                    "std": [0.5] * 3},
        "metrics": {"top1": 61.25, "balanced_acc": 60.0, "many": 91.5, "medium": 48.0, "few": 21.125,
                    "num_many": 2, "num_medium": 1, "num_few": 2},
        "per_class": [95.0, 88.0, 48.0, 30.0, 12.25],
    }


def toy_model(classifier: str = "linear", seed: int = 0) -> LTModel:
    """A timm-native backbone (no ltreg registration needed to load it with timm)."""
    torch.manual_seed(seed)
    model = LTModel(LTModelConfig(backbone="test_resnet", num_classes=5, in_chans=3, proj_dim=16, classifier=classifier))
    return model.eval()


def toy_run(folder: Path, classifier: str = "linear", seed: int = 0, meta: dict | None = None) -> LTModel:
    """A run folder as the trainer leaves it: model files plus metrics and checkpoints."""
    model = toy_model(classifier, seed)
    save_pretrained(model, folder, RunCard.from_dict(meta or fake_meta()))
    (folder / "metrics.json").write_text(json.dumps(fake_meta()["metrics"]))
    (folder / "checkpoints" / "stage1-epoch-1").mkdir(parents=True)
    (folder / "checkpoints" / "stage1-epoch-1" / "model.safetensors").write_bytes(b"not for the Hub")
    return model


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def model_files(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in MODEL_FILES if (folder / f).is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) `ce` run on digits-LT: the trainer's run_meta, metrics.json and checkpoints/."""
    out = tmp_path_factory.mktemp("trained") / "run"
    ltreg.train("ce", epochs=1, max_steps_per_epoch=2, batch_size=32, eval_batch_size=512, output_dir=str(out))
    return out


# -- 1. push a run, load it back from the Hub ------------------------------------------------
def test_push_run_then_from_pretrained_into_empty_cache(hub: HubServer, tmp_path: Path, trained: Path) -> None:
    model = from_pretrained(trained)
    x = torch.randn(4, 1, 8, 8)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    before = snapshot(trained)
    out = run_client(hub, tmp_path, """
        import json, os
        from pathlib import Path
        import torch
        from safetensors.torch import load_file, save_file
        import ltreg
        from ltreg.hub import push_run
        from ltreg.models.ltmodel import LTModel

        cache = Path(os.environ["HF_HUB_CACHE"])
        empty = not cache.exists() or not any(cache.rglob("*"))
        url = push_run(os.environ["RUN"], "org/name")
        model = LTModel.from_pretrained("org/name")
        x = load_file(os.environ["WORK"] + "/x.safetensors")["x"]
        with torch.no_grad():
            out = {"logits": model.predict(x), "features": ltreg.load_backbone("org/name")(x)}
        out.update({"sd." + k: v for k, v in model.state_dict().items()})
        save_file(out, os.environ["WORK"] + "/out.safetensors")
        other = model.push_to_hub("org/in-memory")
        print(json.dumps({"empty": empty, "url": url, "other": other, "training": model.training}))
    """, RUN=str(trained))
    assert out["empty"] and not out["training"] and out["url"].endswith("/org/name")
    got = load_file(str(tmp_path / "out.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(got["logits"], model.predict(x), atol=0, rtol=0)
        torch.testing.assert_close(got["features"], model.forward_features(x), atol=0, rtol=0)
    state = model.state_dict()
    assert {k[3:] for k in got if k.startswith("sd.")} == set(state)
    for k, v in state.items():
        torch.testing.assert_close(got["sd." + k], v, atol=0, rtol=0)
    assert snapshot(trained) == before  # a push only reads the run folder
    repo = hub.repo("org/name")
    assert len(repo.commits) == 2  # create_repo's .gitattributes commit, then one upload commit
    files = hub.repos["org/name"]
    assert set(files) == {".gitattributes", *MODEL_FILES}  # no checkpoints/, no metrics.csv
    for name in (WEIGHTS_FILE, HEADS_FILE, "config.json", PLOT_FILE, "metrics.json"):
        assert files[name] == before[name]
    card = files["README.md"].decode()
    assert 'repo = "org/name"' in card and "<repo_id>" not in card
    assert hub.repos["org/in-memory"][WEIGHTS_FILE] == files[WEIGHTS_FILE]


# -- 2. timm alone loads the pushed repo -----------------------------------------------------
def test_timm_loads_repo_without_ltreg(hub: HubServer, tmp_path: Path) -> None:
    x = torch.randn(6, 3, 32, 32)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    expected = {}
    for classifier in ("linear", "cosine"):
        model = toy_run(tmp_path / classifier, classifier, seed=1)
        hub.seed(f"org/{classifier}", model_files(tmp_path / classifier))
        with torch.no_grad():
            expected[classifier] = model.predict(x)
    out = run_client(hub, tmp_path, """
        import json, os, sys
        import timm, torch
        from safetensors.torch import load_file, save_file

        x = load_file(os.environ["WORK"] + "/x.safetensors")["x"]
        logits, cfg = {}, {}
        for name in ("linear", "cosine"):
            model = timm.create_model(f"hf-hub:org/{name}", pretrained=True).eval()
            with torch.no_grad():
                logits[name] = model(x)
            cfg[name] = {"num_classes": model.num_classes, "label_names": list(model.pretrained_cfg["label_names"])}
        save_file(logits, os.environ["WORK"] + "/timm.safetensors")
        assert "ltreg" not in sys.modules
        print(json.dumps(cfg))
    """)
    got = load_file(str(tmp_path / "timm.safetensors"))
    torch.testing.assert_close(got["linear"], expected["linear"], atol=0, rtol=0)
    assert torch.equal(got["cosine"].argmax(1), expected["cosine"].argmax(1))
    assert out["linear"] == {"num_classes": 5, "label_names": list("abcde")}
    assert "same predictions (argmax)" in (tmp_path / "cosine" / "README.md").read_text()


# -- 3. the model card parses back ----------------------------------------------------------
def test_model_card_round_trips(hub: HubServer, tmp_path: Path) -> None:
    toy_run(tmp_path / "run")
    hub.seed("org/card", model_files(tmp_path / "run"))
    out = run_client(hub, tmp_path, """
        import json
        from huggingface_hub import ModelCard

        card = ModelCard.load("org/card")
        data = card.data.to_dict()
        results = {r.metric_name: [r.metric_type, r.metric_value, r.dataset_name] for r in card.data.eval_results}
        print(json.dumps({"results": results, "ltreg": data["ltreg"], "library": data["library_name"],
                          "tags": data["tags"], "license": data["license"], "datasets": data["datasets"],
                          "text": card.text}))
    """)
    meta = fake_meta()
    assert out["results"] == {f"top-1 ({s})": ["accuracy", meta["metrics"][k], "toy-test"]
                              for s, k in (("all", "top1"), ("many", "many"), ("medium", "medium"), ("few", "few"))}
    assert out["ltreg"] == {
        "method": "ce", "distribution": "ltreg", "hparams": {"tau": 1.0}, "dataset": "toy-lt",
        "lt_profile": {"measured": {"imbalance": 40.0, "shape": "exponential", "largest": 120, "smallest": 3},
                       "declared": {"profile": "exp", "imbalance": 40.0}, "seed": 3}, "class_counts": COUNTS,
        "many_thr": 30, "few_thr": 10, "distributions": {"ltreg": ltreg.__version__},
    }
    assert out["library"] == "timm" and out["license"] == "apache-2.0" and out["datasets"] == ["org/toy-lt"]
    assert {"ltreg", "long-tailed-recognition", "image-classification", "ce"} <= set(out["tags"])
    text = out["text"]
    assert "| Few | 2 | 21.12 |" in text and f"]({PLOT_FILE})" in text and "| weight_decay | 0.0005 |" in text
    assert "| hparams.tau | 1 |" in text and "He et al., Deep Residual Learning" in text
    assert "```bibtex\n@inproceedings{he2016resnet," in text  # the method's BibTeX, as a block
    assert "Parameters:" in text and "timm.data.create_transform" in text  # size, and a timm-only snippet
    assert 'repo = "<repo_id>"' in text and 'f"hf-hub:{repo}"' in text


# -- 4. a failing push leaves everything as it was, then a retry works ----------------------
def test_failed_push_keeps_run_and_hub_then_retry_succeeds(hub: HubServer, tmp_path: Path) -> None:
    """Commit answered 500, connection dropped at the commit, server stopped: each a PushError."""
    toy_run(tmp_path / "old", seed=1)
    run = tmp_path / "new"
    toy_run(run, seed=2)
    head = hub.seed("org/retry", model_files(tmp_path / "old")).oid
    before = snapshot(run)
    hub.fail_next_commit = True  # 500 on the commit, after the LFS uploads
    hub.fail_next("commit", "disconnect")  # then the server drops the connection mid-push
    script = """
        import json, os, sys
        from ltreg.hub import PushError, push_run

        errors = []
        def attempt():
            try:
                push_run(os.environ["RUN"], "org/retry")
            except PushError as exc:
                errors.append(str(exc))
        attempt(); attempt()
        print("stop", flush=True); sys.stdin.readline()
        attempt()
        print("start", flush=True); sys.stdin.readline()
        url = push_run(os.environ["RUN"], "org/retry")
        print(json.dumps({"errors": errors, "url": url}), flush=True)
    """
    env = {**os.environ, **hub_env(hub, tmp_path), "RUN": str(run)}
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        for line, toggle in (("stop", hub.stop), ("start", hub.start)):
            got = proc.stdout.readline().strip()
            assert got == line, (tmp_path / "stderr.txt").read_text()[-3000:]
            assert hub.repo("org/retry").branches["main"] == head  # main unchanged by the failures
            toggle()
            proc.stdin.write("go\n")
            proc.stdin.flush()
        stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert len(out["errors"]) == 3
    assert "500" in out["errors"][0] and "Connection refused" in out["errors"][2]
    for message in out["errors"]:
        assert f"ltreg push {run} --repo org/retry" in message and f"intact at {run}" in message
    assert snapshot(run) == before
    files = hub.repos["org/retry"]
    assert files[WEIGHTS_FILE] == before[WEIGHTS_FILE] and files[HEADS_FILE] == before[HEADS_FILE]


# -- 5. local loading errors and safeguards --------------------------------------------------
def test_bare_model_gets_a_minimal_card(tmp_path: Path) -> None:
    model = toy_model("cosine")
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "library_name: timm" in card and "model-index" not in card and "## How to load" in card
    assert not (tmp_path / PLOT_FILE).exists()
    assert json.loads((tmp_path / "config.json").read_text())["ltreg"]["model"]["classifier"] == "cosine"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(tmp_path).predict(x), model.predict(x), atol=0, rtol=0)


def test_evaluate_pretrained_reproduces_the_run_metrics(trained: Path) -> None:
    config = json.loads((trained / "config.json").read_text())
    assert config["ltreg"]["dist"] == "ltreg" and (trained / PLOT_FILE).is_file()
    run = json.loads((trained / "metrics.json").read_text())
    metrics = evaluate_pretrained(str(trained))
    for key in ("top1", "balanced_acc", "many", "medium", "few", "num_many", "num_medium", "num_few"):
        assert metrics[key] == pytest.approx(run[key], abs=1e-9), key
    assert metrics["per_class"] == run["per_class"]


def test_cli_train_push_to_hub_and_failed_cli_push(hub: HubServer, tmp_path: Path) -> None:
    """`ltreg train --push-to-hub` publishes; `ltreg push` to a failing Hub exits 1 with the retry command."""
    env = {**os.environ, **hub_env(hub, tmp_path)}
    run = tmp_path / "run"
    args = [sys.executable, "-m", "ltreg", "train", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size",
            "32", "--eval-batch-size", "512", "--output-dir", str(run), "--push-to-hub", "org/cli-run"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "config.json" in hub.repos["org/cli-run"] and "model.safetensors" in hub.repos["org/cli-run"]
    hub.fail_next_commit = True
    proc = subprocess.run([sys.executable, "-m", "ltreg", "push", str(run), "--repo", "org/cli-run2"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"ltreg push {run.resolve()} --repo org/cli-run2" in proc.stderr


def test_card_claims_no_license_or_dataset_it_was_not_given(tmp_path: Path) -> None:
    meta = fake_meta()
    meta["license"], meta["dataset"]["hub_id"] = None, None
    toy_run(tmp_path / "run", meta=meta)
    header = (tmp_path / "run" / "README.md").read_text().split("\n---\n", 1)[0]
    assert "license:" not in header and "datasets:" not in header  # no license unless given; no Hub id, no datasets
    assert "model-index:" in header and "ltreg:" in header
