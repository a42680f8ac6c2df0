"""The model card tells the truth and its snippets run: the long-tail profile is measured from the
training counts, and every Python block of README.md runs against a local run folder and against the
same run pushed to the test Hub server (tests/hubserver.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer, hub_env  # noqa: E402

import ltreg  # noqa: E402
from ltreg.card import DatasetRecord, RunCard, measure_profile, model_card  # noqa: E402
from ltreg.data.lt import lt_counts  # noqa: E402
from ltreg.models.ltmodel import LTModel, LTModelConfig  # noqa: E402
from ltreg.models.pretrained import folder_config  # noqa: E402


def test_profile_is_measured_from_the_counts() -> None:
    exp = measure_profile(lt_counts(500, 100, 100.0, "exp"))
    assert exp.shape == "exponential" and exp.imbalance == 100.0 and (exp.largest, exp.smallest) == (500, 5)
    step = measure_profile(lt_counts(500, 10, 10.0, "step"))
    assert step.shape == "step" and step.imbalance == 10.0
    assert measure_profile([30, 30, 30]).shape == "balanced"
    irregular = measure_profile([84, 20, 80, 21, 79])
    assert irregular.shape == "irregular" and irregular.imbalance == pytest.approx(4.2)
    assert measure_profile([]).imbalance is None


def test_card_of_an_undeclared_folder_states_measured_numbers_only() -> None:
    """An image folder records the builder's default profile name with no imbalance: nobody applied one."""
    counts = [84, 20, 80, 21, 79]
    ds = DatasetRecord(name="imagefolder-lt", class_counts=counts, class_names=list("abcde"), image_size=32,
                       mean=[0.5] * 3, std=[0.5] * 3, info={"profile": "exp", "imbalance": None})
    card = RunCard(method="ce", recipe={"seed": 0}, dataset=ds, augmentation="cls: random crop, no flip")
    model = LTModel(LTModelConfig(backbone="resnet8", num_classes=5, in_chans=3))
    text = model_card(folder_config(model, card), card)
    row = next(line for line in text.splitlines() if line.startswith("| data set |"))
    assert "imbalance 4.2 (84 / 20 images per class, measured), irregular profile" in row
    assert "exp" not in row and "built with" not in row
    assert "| augmentation | cls: random crop, no flip |" in text
    assert "declared: null" in text and "shape: irregular" in text  # the YAML block says so too
    declared = RunCard(method="ce", dataset=DatasetRecord(name="digits-lt", class_counts=lt_counts(140, 10, 20.0),
                                                          info={"profile": "exp", "imbalance": 20.0}))
    text = model_card(folder_config(model, declared), declared)
    assert "exponential profile; built with the exp profile at imbalance 20" in text


def python_blocks(card: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", card, re.M | re.S)


#: One interpreter (imports paid once): push the run when asked, read the card (the Hub copy, or the local one
#: with its placeholder replaced), run each Python block as written in a fresh namespace; print the card and
#: each block's last output line as JSON.
RUNNER = r"""
import contextlib, io, json, os, re
if os.environ.get("PUSH_REPO"):
    from huggingface_hub import hf_hub_download
    from ltreg.hub import push_run
    push_run(os.environ["RUN"], os.environ["PUSH_REPO"])
    card = open(hf_hub_download(os.environ["PUSH_REPO"], "README.md")).read()
else:
    card = open(os.path.join(os.environ["RUN"], "README.md")).read().replace("<repo_id>", os.environ["RUN"])
outs = []
for n, code in enumerate(re.findall(r"^```python\n(.*?)^```$", card, re.M | re.S)):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, f"card block {n}", "exec"), {"__name__": "__main__"})
    outs.append(buf.getvalue().strip().splitlines()[-1])
print(json.dumps({"card": card, "outputs": outs}))
"""


def run_card(run: Path, cwd: Path, env: dict[str, str] | None = None) -> dict:
    """The card's Python blocks run as written from ``cwd`` (which holds image.png): the card and their outputs."""
    proc = subprocess.run([sys.executable, "-c", RUNNER], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {}), "RUN": str(run)})
    assert proc.returncode == 0, f"a card snippet failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("card") / "run"
    ltreg.train("ce", epochs=1, max_steps_per_epoch=2, batch_size=32, eval_batch_size=512, output_dir=str(out),
                quiet=True)
    return out


def image_in(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (8, 8), dtype=np.uint8), "L").save(folder / "image.png")
    return folder


def check_outputs(outputs: list[str], names: list[str]) -> None:
    ltreg_out, timm_out = outputs
    assert ltreg_out.isdigit() and 0 <= int(ltreg_out) < len(names)  # a class index
    assert timm_out in names  # a class name


def test_card_snippets_run_against_the_local_run_folder(run_dir: Path, tmp_path: Path) -> None:
    assert "hf-hub:<repo_id>" not in (run_dir / "README.md").read_text()  # a folder is no Hub repo
    out = run_card(run_dir, image_in(tmp_path / "work"))
    assert len(python_blocks(out["card"])) == len(out["outputs"]) == 2
    check_outputs(out["outputs"], [str(i) for i in range(10)])


def test_card_snippets_run_against_the_hub(run_dir: Path, tmp_path: Path) -> None:
    """Pushed as it is (the push writes the repo id into the card); the snippets of the Hub copy run."""
    with HubServer() as hub:
        out = run_card(run_dir, image_in(tmp_path / "work"), {**hub_env(hub, tmp_path), "PUSH_REPO": "org/digits"})
    assert "<repo_id>" not in out["card"] and 'repo = "org/digits"' in out["card"]
    assert len(out["outputs"]) == 2
    check_outputs(out["outputs"], [str(i) for i in range(10)])
