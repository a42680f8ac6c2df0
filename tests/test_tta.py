"""Test-time view sets (``ltreg.eval_views``): averaged logits equal a hand-written loop over the crops; the
centre set is evaluation as before; names and arguments are checked before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from ltreg.data.build import DataArgs, build_data
from ltreg.data.evalviews import build_eval_views
from ltreg.errors import ConfigError, UnknownNameError
from ltreg.evaluate import DataPasses, evaluate
from ltreg.models.ltmodel import LTModel, LTModelConfig


@pytest.fixture(scope="module")
def setup():
    data = build_data(DataArgs("digits-lt"))
    test = data.test.subset(np.arange(0, 300, 7))
    torch.manual_seed(0)
    model = LTModel(LTModelConfig(backbone="resnet8", num_classes=10, in_chans=1, proj_dim=None)).eval()
    return data, test, model


def hand_loop(model, test, expand, mirror=False):
    """Per image: resize the shorter side to S + expand, cut the four corners and the centre by index,
    (mirror them), scale to [0, 1], normalise, classify each crop, average the logits."""
    s = test.image_size
    mean, std = torch.tensor(test.mean).view(-1, 1, 1), torch.tensor(test.std).view(-1, 1, 1)
    out = []
    with torch.no_grad():
        for i in range(len(test)):
            big = TF.resize(test.source.load(i), [s + expand], antialias=True)
            h, w = big.shape[-2:]
            corners = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), (int(round((h - s) / 2)), int(round((w - s) / 2)))]
            crops = [big[..., t:t + s, left:left + s] for t, left in corners]
            if mirror:
                crops += [c.flip(-1) for c in crops]
            x = (torch.stack(crops).float() / 255 - mean) / std
            out.append(model.predict(x).mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("expand", [None, 3])
def test_fivecrop_logits_equal_a_hand_written_loop(setup, expand):
    _, test, model = setup
    kwargs = {} if expand is None else {"expand": expand}
    views = build_eval_views("fivecrop", test, **kwargs)
    assert views.num_views == 5
    got = DataPasses(model, torch.device("cpu"), batch_size=16).extract(test, views).logits
    want = hand_loop(model, test, 1 if expand is None else expand)  # 24/224 of 8 px rounds to 1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    plain = DataPasses(model, torch.device("cpu"), batch_size=16).extract(test).logits
    assert not torch.allclose(got, plain)  # the crops are not the one centre view


def test_tencrop_mirrors_and_is_refused_where_flips_change_labels(setup):
    data, test, model = setup
    flippable = test if test.allow_flip else __import__("dataclasses").replace(test, allow_flip=True)
    views = build_eval_views("tencrop", flippable)
    got = DataPasses(model, torch.device("cpu"), batch_size=16).extract(flippable, views).logits
    torch.testing.assert_close(got, hand_loop(model, flippable, 1, mirror=True), atol=1e-5, rtol=1e-5)
    if not test.allow_flip:
        with pytest.raises(ConfigError, match="flip changes the labels"):
            build_eval_views("tencrop", test)


def test_center_is_evaluation_as_before_and_is_recorded(setup):
    data, test, model = setup
    passes = DataPasses(model, torch.device("cpu"), batch_size=16)
    centre = evaluate(passes, test, data.train, build_eval_views("center", test))
    before = evaluate(passes, test, data.train)
    assert centre["top1"] == before["top1"] and centre["per_class"] == before["per_class"]
    assert centre["eval_views"]["name"] == "center" and centre["eval_views"]["views"] == 1
    five = evaluate(passes, test, data.train, build_eval_views("fivecrop", test))
    assert five["eval_views"]["name"] == "fivecrop" and five["eval_views"]["views"] == 5


def test_unknown_set_and_bad_arguments_stop(setup):
    _, test, _ = setup
    with pytest.raises(UnknownNameError, match="fivecrop"):
        build_eval_views("fivecorp", test)
    with pytest.raises(ConfigError, match="do not accept"):
        build_eval_views("center", test, expand=4)
    with pytest.raises(ConfigError, match="expand must be an integer"):
        build_eval_views("fivecrop", test, expand=-1)


def test_tta_flag_stops_before_training(tmp_path):
    import ltreg

    with pytest.raises(UnknownNameError, match="Did you mean: fivecrop"):
        ltreg.train("balanced-softmax", tta="fivecrp", output_dir=str(tmp_path / "r"), epochs=1)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_eval_cli_tta_flag(tmp_path, tiny, subprocess_env):
    import json
    import subprocess

    import ltreg
    from tests.conftest import LTREG

    out = tmp_path / "run"
    ltreg.train("ce", output_dir=str(out), **tiny)
    run = subprocess.run([*LTREG, "eval", str(out), "--tta", "fivecrop", "--json"], capture_output=True, text=True,
                         env=subprocess_env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "test-time views: fivecrop (5 views" in run.stderr  # --json: the human lines go to stderr
    assert json.loads(run.stdout)["metrics"]["eval_views"]["name"] == "fivecrop"  # stdout: the JSON alone
