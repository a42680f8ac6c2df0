"""Initial weights: timm tags, hf-hub: repos and folders as backbones, --pretrained, --init-from.

Hub scenarios push a real small timm model (``test_resnet``) to the in-memory Hub server and run the
client in subprocesses pointed at it (``huggingface_hub`` reads ``HF_ENDPOINT`` when imported); a
second subprocess then runs with ``HF_HUB_OFFLINE=1`` from the cache the first one filled.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer, run_client  # noqa: E402

import ltreg  # noqa: E402
from ltreg.config import TrainConfig, resolve_config  # noqa: E402
from ltreg.errors import ConfigError
from ltreg.models.backbones import load_initial_weights, resolve_arch  # noqa: E402
from ltreg.models.ltmodel import LTModel, LTModelConfig  # noqa: E402
from ltreg.run import build_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: Pushes a seeded test_resnet to the repo REPO and saves its weights to WORK/pushed.safetensors.
PUSH = """
    import json, os, timm, torch
    from safetensors.torch import save_file
    from timm.models import push_to_hf_hub
    torch.manual_seed(123)
    model = timm.create_model("test_resnet", num_classes=0)
    push_to_hf_hub(model, os.environ["REPO"], safe_serialization=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.environ["WORK"] + "/pushed.safetensors")
"""

#: Builds the run for BACKBONE (and PRETRAINED) on digits-LT, saves the initial backbone, prints the message.
BUILD = """
    import contextlib, io, json, os
    from safetensors.torch import save_file
    import ltreg
    from ltreg.config import resolve_config
    from ltreg.run import build_run
    overrides = {"backbone": os.environ["BACKBONE"], "output_dir": os.environ["WORK"] + "/" + os.environ["OUT"],
                 "pretrained": os.environ.get("PRETRAINED") == "1", "overwrite": True}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        run = build_run(resolve_config(ltreg.get_method("ce"), overrides))
    save_file({k: v.contiguous() for k, v in run.model.backbone.state_dict().items()},
              os.environ["WORK"] + "/" + os.environ["OUT"] + ".safetensors")
    print(json.dumps({"said": buf.getvalue(), "arch": run.model.config.backbone, "pretrained": run.cfg.pretrained}))
"""


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        yield server




def assert_initial_backbone_is(pushed: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """Every tensor equals the pushed one; the 3-channel stem is timm's 1-channel adaptation (sum over RGB)."""
    assert pushed.keys() == got.keys()
    for key, value in pushed.items():
        want = value.sum(1, keepdim=True) if key == "conv1.0.weight" else value
        torch.testing.assert_close(got[key], want, rtol=0, atol=1e-6, msg=key)


def test_hf_hub_backbone_trains_from_the_pushed_weights_online_and_offline(hub: HubServer, tmp_path: Path) -> None:
    run_client(hub, tmp_path, PUSH, REPO="org/tiny-timm")
    pushed = load_file(str(tmp_path / "pushed.safetensors"))
    out = run_client(hub, tmp_path, BUILD, BACKBONE="hf-hub:org/tiny-timm", OUT="online")
    assert out["arch"] == "test_resnet" and out["pretrained"] is True
    assert "backbone hf-hub:org/tiny-timm: pretrained weights from hf-hub:org/tiny-timm" in out["said"]
    assert "adapted from 3 to 1 channel(s) by timm's adapt_input_conv" in out["said"]
    assert_initial_backbone_is(pushed, load_file(str(tmp_path / "online.safetensors")))
    offline = run_client(hub, tmp_path, BUILD, BACKBONE="hf-hub:org/tiny-timm", OUT="offline", HF_HUB_OFFLINE="1")
    assert_initial_backbone_is(pushed, load_file(str(tmp_path / "offline.safetensors")))
    assert "pretrained weights from hf-hub:org/tiny-timm" in offline["said"]
    # a short fine-tuning run; its model folder loads in timm from the Hub as plain test_resnet
    result = run_client(hub, tmp_path, """
        import json, os, timm, torch
        import ltreg
        from ltreg.hub import push_run
        out = os.environ["WORK"] + "/ft"
        ltreg.train("ce", backbone="hf-hub:org/tiny-timm", epochs=1, max_steps_per_epoch=2, batch_size=32,
                    eval_batch_size=512, output_dir=out)
        config = json.load(open(out + "/config.json"))
        push_run(out, "org/finetuned")
        model = timm.create_model("hf-hub:org/finetuned", pretrained=True).eval()
        ours = ltreg.from_pretrained(out)
        x = torch.randn(3, 1, 8, 8)
        with torch.no_grad():
            same = torch.allclose(model(x), ours.predict(x), atol=1e-5)
        import contextlib, io
        from ltreg.config import resolve_config
        from ltreg.run import build_run
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):  # --init-from the Hub repo of that run: backbone and classifier
            run = build_run(resolve_config(ltreg.get_method("ce"), {"init_from": "org/finetuned", "backbone":
                            "test_resnet", "output_dir": os.environ["WORK"] + "/again"}))
        init = buf.getvalue().strip() == "init-from org/finetuned@main: backbone loaded, classifier loaded" and all(
            torch.equal(v, run.model.state_dict()[k]) for k, v in ours.state_dict().items())
        card = open(out + "/README.md").read()
        rows = ("| pretrained | True |", "| backbone_weights | hf-hub:org/tiny-timm |", "| backbone | test_resnet |")
        print(json.dumps({"architecture": config["architecture"], "same": same, "card": all(r in card for r in rows),
                          "init": init}))
    """)
    assert result == {"architecture": "test_resnet", "same": True, "card": True, "init": True}


def test_tagged_name_loads_the_tag_weights_and_pretrained_picks_the_default_tag(hub: HubServer, tmp_path: Path) -> None:
    # timm's test_resnet.r160_in1k lives at hf_hub_id timm/test_resnet.r160_in1k: serve it from the test Hub
    run_client(hub, tmp_path, PUSH, REPO="timm/test_resnet.r160_in1k")
    pushed = load_file(str(tmp_path / "pushed.safetensors"))
    tagged = run_client(hub, tmp_path, BUILD, BACKBONE="test_resnet.r160_in1k", OUT="tagged")  # no --pretrained
    assert tagged["pretrained"] is True and tagged["arch"] == "test_resnet"
    assert ("backbone test_resnet.r160_in1k: pretrained weights from hf-hub:timm/test_resnet.r160_in1k"
            in tagged["said"])
    assert_initial_backbone_is(pushed, load_file(str(tmp_path / "tagged.safetensors")))
    plain = run_client(hub, tmp_path, BUILD, BACKBONE="test_resnet", OUT="plain", PRETRAINED="1", HF_HUB_OFFLINE="1")
    assert "backbone test_resnet: pretrained weights from hf-hub:timm/test_resnet.r160_in1k" in plain["said"]
    assert_initial_backbone_is(pushed, load_file(str(tmp_path / "plain.safetensors")))



def test_plain_name_without_pretrained_is_random(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = build_run(resolve_config(ltreg.get_method("ce"), {"backbone": "test_resnet", "output_dir": str(tmp_path)}))
    assert run.cfg.pretrained is False and "pretrained weights" not in capsys.readouterr().out
    torch.manual_seed(0)  # build_run seeds 0 before the model: timm's own initialisation, nothing loaded
    assert torch.equal(run.model.backbone.conv1[0].weight, timm.create_model("test_resnet", num_classes=0, in_chans=1).conv1[0].weight)


def test_missing_weights_stop_with_the_name_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    model = LTModel(LTModelConfig(backbone="resnet8", num_classes=5, in_chans=1))
    with pytest.raises(ConfigError, match="backbone resnet8: timm has no pretrained weights.*Drop --pretrained"):
        load_initial_weights(model, "resnet8", True, None)
    with pytest.raises(ConfigError, match="backbone hf-hub:org/absent: cannot read its config.json"):
        resolve_arch("hf-hub:org/absent")
    with pytest.raises(ConfigError, match="backbone must be a timm architecture name"):  # a config is data: no source
        LTModelConfig(backbone="hf-hub:org/absent", num_classes=5, in_chans=1)
    with pytest.raises(ConfigError, match="not a folder here.*hf-hub:org/absent"):
        TrainConfig(backbone="org/absent")
    with pytest.raises(ConfigError, match="--init-from runs/x gives the initial weights.*pass one of them"):
        TrainConfig(backbone="resnet18.a1_in1k", init_from="runs/x")


def test_places_lt_fine_tunes_an_imagenet_pretrained_resnet152() -> None:
    cfg = resolve_config(ltreg.get_method("ce"), {"dataset": "places-lt"}).cfg
    assert (cfg.backbone, cfg.pretrained) == ("resnet152.tv_in1k", True)
    assert cfg.recipe_items()["pretrained"] is True
    quick = resolve_config(ltreg.get_method("ce"), {"dataset": "places-lt", "quick": True}).cfg
    assert (quick.backbone, quick.pretrained) == ("resnet8", False)  # --quick swaps in a small random backbone


def test_init_from_a_finished_run_and_a_run_folder_as_backbone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = tmp_path / "first"
    done = ltreg.train("ce", epochs=1, max_steps_per_epoch=2, batch_size=32, eval_batch_size=512, output_dir=str(first))
    trained = {k: v.cpu() for k, v in done.model.state_dict().items()}
    capsys.readouterr()
    run = build_run(resolve_config(ltreg.get_method("ce"), {"init_from": str(first), "output_dir": str(tmp_path / "b")}))
    said = capsys.readouterr().out
    assert f"init-from {first}: backbone loaded, classifier loaded" in said
    for key, value in run.model.state_dict().items():
        torch.testing.assert_close(value.cpu(), trained[key], rtol=0, atol=0, msg=key)
    # the same folder as --backbone: its backbone (through timm's local-dir loader), heads random
    run = build_run(resolve_config(ltreg.get_method("ce"), {"backbone": str(first), "output_dir": str(tmp_path / "c")}))
    assert f"backbone {first}: pretrained weights from local-dir:{first.resolve()}" in capsys.readouterr().out
    assert run.model.config.backbone == "resnet8"
    got = run.model.state_dict()
    assert all(torch.equal(got[k].cpu(), v) for k, v in trained.items() if k.startswith("backbone."))
    assert not torch.equal(got["classifier.weight"].cpu(), trained["classifier.weight"])
    # a timm model folder (no ltreg heads) with --init-from: backbone (stem adapted to 1 channel), heads random
    torch.manual_seed(5)
    source = timm.create_model("test_resnet", num_classes=0)
    timm.models.save_for_hf(source, tmp_path / "timm-folder", safe_serialization=True)
    run = build_run(resolve_config(ltreg.get_method("ce"), {"init_from": str(tmp_path / "timm-folder"),
                                                            "backbone": "test_resnet", "output_dir": str(tmp_path / "e")}))
    said = capsys.readouterr().out
    assert "backbone loaded, heads kept random (no ltreg_heads.safetensors" in said and "from 3 to 1 channel" in said
    assert_initial_backbone_is(source.state_dict(), run.model.backbone.state_dict())
    # a different architecture is refused before anything is built on it, naming the fix
    with pytest.raises(ConfigError, match="holds a 'resnet8' backbone but this run builds 'resnet20'.*--backbone resnet8"):
        build_run(resolve_config(ltreg.get_method("ce"), {"init_from": str(first), "backbone": "resnet20",
                                                          "output_dir": str(tmp_path / "d")}))
