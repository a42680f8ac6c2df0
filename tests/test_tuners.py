"""Tuners (issue 26): exactly the declared parameters train, adapters start as the identity, merged exports load
in timm alone with the same logits, AdaptFormer loads in ltreg, every method trains with every tuner, resumes
bit-identically, and stage 2 runs on top. Offline: a tiny timm ViT made here, saved as a timm model folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf

import ltreg
from ltreg.errors import TunerError
from ltreg.registry import UnknownNameError, registry
from ltreg.tuners import build_tuner

ROOT = Path(__file__).resolve().parents[1]
TUNERS = ("full", "linear", "bitfit", "layernorm", "lora", "dora", "ia3", "adaptformer")
#: A ViT for digits-LT's 1-channel 8 px images: 4 patches, 2 blocks, width 32 (26,208 parameters).
VIT_ARGS = {"img_size": 8, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2, "in_chans": 1}
STEPS = {"epochs": 1, "max_steps_per_epoch": 2, "batch_size": 16, "eval_batch_size": 512, "quiet": True}


def stage2(method: str) -> dict[str, int]:
    """One stage-2 epoch for a two-stage method (a one-stage method refuses --stage2-epochs)."""
    return {"stage2_epochs": 1} if ltreg.get_method(method).rebalance is not None else {}


def make_vit(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, **VIT_ARGS)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' tiny ViT as a timm model folder (config.json with model_args + model.safetensors)."""
    folder = tmp_path_factory.mktemp("tinyvit") / "vit"
    save_for_hf(make_vit(), folder, model_args=VIT_ARGS)
    return folder


def expected_trainable(name: str, vit: torch.nn.Module) -> int:
    """Counted here from the architecture, independently of the tuners' code (lora r=4, adaptformer dim=8)."""
    linears = {n: m for n, m in vit.named_modules() if isinstance(m, torch.nn.Linear)}
    blocks = [n for n in linears if n.startswith("blocks.")]
    if name == "full":
        return sum(p.numel() for p in vit.parameters())
    if name == "linear":
        return 0
    if name == "bitfit":
        return sum(p.numel() for n, p in vit.named_parameters() if n.endswith(".bias"))
    if name == "layernorm":
        return sum(p.numel() for m in vit.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters())
    if name in ("lora", "dora"):
        lora = sum(4 * (linears[n].in_features + linears[n].out_features) for n in blocks)
        return lora + (sum(linears[n].out_features for n in blocks) if name == "dora" else 0)
    if name == "ia3":  # qkv's outputs and fc2's inputs
        return sum(m.out_features for n, m in linears.items() if n.endswith("qkv")) + \
            sum(m.in_features for n, m in linears.items() if n.endswith("fc2"))
    if name == "adaptformer":  # down (32 -> 8) and up (8 -> 32) per block
        return len(vit.blocks) * ((32 * 8 + 8) + (8 * 32 + 32))
    raise AssertionError(name)


ARGS = {"lora": {"r": 4}, "dora": {"r": 4}, "adaptformer": {"dim": 8}}


def base_key(key: str) -> str:
    """The base model's name of an adapted backbone's tensor (peft keeps the base under ``base_layer``)."""
    return key.replace(".base_layer", "")


# -- 1. the registry and the declared parameters -------------------------------------------------------
def test_tuners_are_registered_and_exported() -> None:
    assert set(TUNERS) <= set(registry("tuners").names())
    assert ltreg.Tuner is type(build_tuner("full")).__mro__[1] and callable(ltreg.register_tuner)
    with pytest.raises(UnknownNameError, match="lora"):
        build_tuner("loar")
    with pytest.raises(TunerError, match="takes no argument rank.*r, alpha, dropout"):
        build_tuner("lora", rank=4)
    with pytest.raises(TunerError, match="r=0 must be >= 1"):
        build_tuner("lora", r=0)


@pytest.mark.parametrize("name", TUNERS)
def test_exactly_the_declared_parameters_train(name: str, vit_dir: Path, tmp_path: Path) -> None:
    """A real run: the trainable count is the one computed here, and every frozen tensor is bit-identical."""
    base = make_vit()
    result = ltreg.train("ce", backbone=str(vit_dir), tuner=name, tuner_args=ARGS.get(name, {}),
                         output_dir=str(tmp_path / "run"), **{**STEPS, "max_steps_per_epoch": 3, "lr": 0.5})
    backbone = result.model.backbone
    trainable = {k: p for k, p in backbone.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected_trainable(name, base)
    start = base.state_dict()
    for key, value in backbone.state_dict().items():
        if base_key(key) in start and key not in trainable:
            assert torch.equal(value, start[base_key(key)]), f"{name}: frozen {key} changed"
    moved = [k for k, p in trainable.items() if base_key(k) not in start or not torch.equal(p, start[base_key(k)])]
    assert len(moved) == len(trainable) or name == "full", f"{name}: {set(trainable) - set(moved)} did not train"
    card = json.loads((tmp_path / "run" / "config.json").read_text())["ltreg"]["tuner"]
    assert card["name"] == name and card["backbone_trainable"] == expected_trainable(name, base)
    assert card["backbone_total"] == sum(p.numel() for p in backbone.parameters())


@pytest.mark.parametrize("name", ["lora", "dora", "ia3", "adaptformer"])
def test_adapters_are_the_identity_at_step_0(name: str) -> None:
    x = torch.randn(4, 1, 8, 8)
    base = make_vit().eval()
    adapted = make_vit()
    build_tuner(name, **ARGS.get(name, {})).apply(adapted)
    adapted.eval()
    with torch.no_grad():
        want, got = base(x), adapted(x)
    if name == "dora":  # W * m / ||W|| with m = ||W||: equal up to rounding
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(got, want)
    assert sum(p.numel() for p in adapted.parameters()) > sum(p.numel() for p in base.parameters())


# -- 2. exports: merged in timm alone, AdaptFormer in ltreg ---------------------------------------------
@pytest.mark.parametrize("name", ["lora", "dora", "ia3"])
def test_merged_export_gives_the_same_logits_in_timm_alone(name: str, vit_dir: Path, tmp_path: Path) -> None:
    result = ltreg.train("ce", backbone=str(vit_dir), tuner=name, tuner_args=ARGS.get(name, {}), lr=0.5,
                         output_dir=str(tmp_path / "run"), **STEPS)
    model = result.model.eval()
    x = torch.randn(6, 1, 8, 8)
    plain = timm.create_model(f"local-dir:{tmp_path / 'run'}", pretrained=True).eval()
    assert not any("lora" in k or "ia3" in k for k in plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model.predict(x), rtol=1e-4, atol=1e-5)
        loaded = ltreg.from_pretrained(tmp_path / "run")
        torch.testing.assert_close(loaded.predict(x), model.predict(x), rtol=1e-4, atol=1e-5)
    assert loaded.config.tuner is None  # merged: a plain backbone
    assert not (tmp_path / "run" / "adapter").exists()  # a local folder as base: no adapter-only export


def test_adaptformer_loads_in_ltreg_and_the_card_says_timm_cannot(vit_dir: Path, tmp_path: Path) -> None:
    result = ltreg.train("ce", backbone=str(vit_dir), tuner="adaptformer", tuner_args={"dim": 8, "layernorm": True,
                         "learnable_scale": True}, lr=0.5, output_dir=str(tmp_path / "run"), **STEPS)
    x = torch.randn(6, 1, 8, 8)
    loaded = ltreg.from_pretrained(tmp_path / "run")
    with torch.no_grad():
        assert torch.equal(loaded.predict(x), result.model.eval().predict(x))
    assert loaded.config.tuner["name"] == "adaptformer" and loaded.config.tuner["args"]["dim"] == 8
    with pytest.raises(RuntimeError, match="adaptformer"):
        timm.create_model(f"local-dir:{tmp_path / 'run'}", pretrained=True)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "cannot be merged" in card and "ltreg.from_pretrained" in card and "timm.create_model" not in card


# -- 3. errors before any work ------------------------------------------------------------------------
def test_a_tuner_that_does_not_fit_stops_before_any_work(vit_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TunerError, match="adaptformer.*resnet8 has none"):
        ltreg.train("ce", backbone="resnet8", tuner="adaptformer", output_dir=str(tmp_path / "a"), **STEPS)
    with pytest.raises(TunerError, match="lora finds no layers to adapt.*target_modules"):
        ltreg.train("ce", backbone="resnet8", tuner="lora", tuner_args={"target_modules": r"head\.\w+"},
                    output_dir=str(tmp_path / "b"), **STEPS)
    with pytest.raises(TunerError, match="layernorm.*no LayerNorm"):
        ltreg.train("ce", backbone="resnet8", tuner="layernorm", output_dir=str(tmp_path / "c"), **STEPS)
    assert not any((tmp_path / d).exists() for d in "abc")  # no run folder, no checkpoint: stopped first
    proc = subprocess.run([sys.executable, "-m", "ltreg", "train", "--method", "ce", "--tuner", "ia3",
                           "--tuner-arg", "nope=1", "--output-dir", str(tmp_path / "d")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "tuner ia3 takes no argument nope" in proc.stderr, proc.stderr


def test_tuner_from_flags_yaml_and_the_spec(vit_dir: Path, tmp_path: Path) -> None:
    from ltreg.cli import build_parser
    from ltreg.config import parse_tuner_args, resolve_config, tuner_ref

    args = build_parser().parse_args(["train", "--tuner", "lora", "--tuner-arg", "r=4", "--tuner-arg", "alpha=1e-1",
                                      "--tuner-arg", "target_modules=blocks\\.0\\..*"])
    assert args.tuner == "lora" and parse_tuner_args(args.tuner_arg) == {"r": 4, "alpha": 0.1,
                                                                          "target_modules": "blocks\\.0\\..*"}
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("tuner: ia3\ntuner_args: {target_modules: 'blocks\\.\\d+\\.attn\\.qkv'}\n")
    from ltreg.config import load_yaml

    rc = resolve_config(ltreg.get_method("ce"), {}, load_yaml(yaml_file))
    assert tuner_ref(rc.spec, rc.cfg, rc.hparams) == ("ia3", {"target_modules": "blocks\\.\\d+\\.attn\\.qkv"})
    assert rc.cfg.recipe_items()["tuner"] == "ia3"  # in the card's recipe and the resume fingerprint
    spec = ltreg.get_method("ce")
    import dataclasses

    lora_spec = dataclasses.replace(spec, name="ce-lora-test", tuner=ltreg.PartRef("lora", r=2, alpha=4.0))
    rc = resolve_config(lora_spec, {"tuner_args": {"r": 3}})
    assert tuner_ref(rc.spec, rc.cfg, rc.hparams) == ("lora", {"r": 3, "alpha": 4.0})  # the spec's, one arg changed
    rc = resolve_config(lora_spec, {"tuner": "bitfit"})
    assert tuner_ref(rc.spec, rc.cfg, rc.hparams) == ("bitfit", {})  # another tuner: the spec's args do not apply
    with pytest.raises(TunerError, match=r"bitfit takes no arguments, so --tuner-arg r does not apply; drop it$"):
        resolve_config(lora_spec, {"tuner": "bitfit", "tuner_args": {"r": 2}})


# -- 4. every method with every tuner: train, resume bit-identically, stage 2 on top --------------------
METHODS = sorted(m["name"] for m in ltreg.list_methods() if not m["error"])
CNN_TUNERS = ("full", "linear", "bitfit")


def sweep_method(name: str) -> str:
    """The method as the sweep trains it: one with a head initialiser (LIFT's CLIP text classifier needs a text
    tower of the backbone's checkpoint and class names; its own tests cover it) runs without it, at the data's
    image size (not its recipe's 224 px), as an in-process variant."""
    import dataclasses

    spec = ltreg.get_method(name)
    if spec.head_init is None and "image_size" not in spec.train_defaults:
        return name
    variant = f"{name}-sweep-variant"
    if variant not in registry("methods"):
        defaults = {k: v for k, v in spec.train_defaults.items() if k not in ("image_size", "normalize")}
        ltreg.register_method(dataclasses.replace(spec, name=variant, head_init=None, train_defaults=defaults))
    return variant


def _train_and_resume(method: str, tuner: str, backbone: str, folder: Path) -> None:
    """Train 2 epochs straight; train again, killed after epoch 1, and resume: the same weights, bit for bit."""
    from ltreg import loop as loop_module

    kwargs = {**STEPS, **stage2(method), "epochs": 2, "backbone": backbone, "tuner": tuner,
              "tuner_args": ARGS.get(tuner, {})}
    method = sweep_method(method)
    full = ltreg.train(method, output_dir=str(folder / "full"), **kwargs)
    assert all(r["loss"] == r["loss"] for r in full.history)  # finite
    original, calls = loop_module.run_epoch, []

    def killed(*args, **kw):
        if calls:
            raise KeyboardInterrupt  # the run dies after its first epoch's checkpoint
        calls.append(1)
        return original(*args, **kw)

    loop_module.run_epoch = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            ltreg.train(method, output_dir=str(folder / "part"), **kwargs)
    finally:
        loop_module.run_epoch = original
    resumed = ltreg.train(method, output_dir=str(folder / "part"), resume=True, **kwargs)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{method} + {tuner}: {key} differs after resume"
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_with_a_tuner_on_a_vit(method: str, vit_dir: Path, tmp_path: Path) -> None:
    """Each method once, the tuners in turn (the full product is the slow sweep below)."""
    tuner = TUNERS[METHODS.index(method) % len(TUNERS)]
    method = sweep_method(method)
    result = ltreg.train(method, backbone=str(vit_dir), tuner=tuner, tuner_args=ARGS.get(tuner, {}),
                         output_dir=str(tmp_path / "run"), **STEPS, **stage2(method))
    assert all(r["loss"] == r["loss"] for r in result.history)
    if ltreg.get_method(method).rebalance is not None:
        assert result.metrics["stage2"] is not None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["ltreg"]["tuner"]["name"] == tuner


@pytest.mark.parametrize(("method", "tuner"), [("supcon", "lora"), ("iccl", "adaptformer"), ("ce", "linear")])
def test_resume_is_bit_identical_with_adapters(method: str, tuner: str, vit_dir: Path, tmp_path: Path) -> None:
    if method not in METHODS:
        pytest.skip(f"{method} is not installed")
    _train_and_resume(method, tuner, str(vit_dir), tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("tuner", TUNERS)
@pytest.mark.parametrize("method", METHODS)
def test_sweep_every_method_every_tuner_vit(method: str, tuner: str, vit_dir: Path, tmp_path: Path) -> None:
    _train_and_resume(method, tuner, str(vit_dir), tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("tuner", CNN_TUNERS)
@pytest.mark.parametrize("method", METHODS)
def test_sweep_every_method_cnn_tuners(method: str, tuner: str, tmp_path: Path) -> None:
    _train_and_resume(method, tuner, "resnet8", tmp_path / "run")


@pytest.mark.parametrize("tuner", CNN_TUNERS)
def test_cnn_tuners_train_and_keep_frozen_statistics(tuner: str, tmp_path: Path) -> None:
    """On a CNN: full / linear / bitfit train; a frozen BatchNorm keeps its running statistics (eval mode)."""
    torch.manual_seed(0)
    result = ltreg.train("ce", backbone="resnet8", tuner=tuner, output_dir=str(tmp_path / "run"), **STEPS)
    from ltreg.models.ltmodel import create_backbone

    fresh = create_backbone("resnet8", 1)
    bn = dict(result.model.backbone.named_buffers())["bn1.running_mean"]
    assert torch.equal(bn, dict(fresh.named_buffers())["bn1.running_mean"]) == (tuner == "linear")


# -- 5. the Hub: a tiny ViT pushed as the base, merged and adapter-only round trips -----------------------
def test_lora_run_pushed_merged_and_adapter_only_round_trips(vit_dir: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from hubserver import HubServer, run_client

    with HubServer() as hub:
        run_client(hub, tmp_path / "train", f"""
            import os, torch, ltreg
            from huggingface_hub import HfApi
            from safetensors.torch import save_file
            from ltreg.hub import push_run
            api = HfApi()
            api.create_repo("org/tiny-vit")
            api.upload_folder(repo_id="org/tiny-vit", folder_path={str(vit_dir)!r})
            work = os.environ["WORK"]
            r = ltreg.train("ce", backbone="hf-hub:org/tiny-vit", tuner="lora", tuner_args={{"r": 4}}, lr=0.5,
                            output_dir=work + "/run", **{STEPS!r})
            torch.manual_seed(1)
            x = torch.randn(5, 1, 8, 8)
            m = r.model.eval()
            with torch.no_grad():
                save_file({{"x": x, "logits": m.predict(x), "features": m.forward_features(x).contiguous()}}, work + "/ref.safetensors")
            push_run(work + "/run", "org/ce-lora", adapter_only=True)
            push_run(work + "/run", "org/ce-lora-merged")
            print("{{}}")
        """)
        run_dir = tmp_path / "train" / "run"
        assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
        assert "adapter_model.safetensors" not in hub.files("org/ce-lora-merged")
        adapter_files = set(hub.files("org/ce-lora"))
        assert {"adapter_model.safetensors", "adapter_config.json", "ltreg_heads.safetensors"} <= adapter_files
        assert "model.safetensors" not in adapter_files
        out = run_client(hub, tmp_path / "fresh", f"""
            import json, timm, torch, ltreg
            from peft import PeftModel
            from safetensors.torch import load_file
            ref = load_file({str(tmp_path / 'train' / 'ref.safetensors')!r})
            x = ref["x"]
            with torch.no_grad():
                adapter = ltreg.from_pretrained("org/ce-lora")          # fetches the base, applies the adapter
                merged = timm.create_model("hf-hub:org/ce-lora-merged", pretrained=True).eval()  # timm alone
                base = timm.create_model("hf-hub:org/tiny-vit", pretrained=True, num_classes=0)
                peft_backbone = PeftModel.from_pretrained(base, "org/ce-lora").eval()  # peft alone
                out = {{"adapter": (adapter.predict(x) - ref["logits"]).abs().max().item(),
                       "merged": (merged(x) - ref["logits"]).abs().max().item(),
                       "peft": (peft_backbone(x) - ref["features"]).abs().max().item(),
                       "tuner": adapter.config.tuner["name"]}}
            print(json.dumps(out))
        """)
    assert out["tuner"] == "lora"
    assert out["adapter"] == 0.0  # the same tensors, the same computation
    assert out["merged"] < 1e-4 and out["peft"] < 1e-5


def test_adapter_only_push_needs_a_base_timm_can_fetch(vit_dir: Path, tmp_path: Path) -> None:
    from ltreg.checkpoint import CheckpointError
    from ltreg.hub import push_run

    ltreg.train("ce", backbone=str(vit_dir), tuner="lora", output_dir=str(tmp_path / "run"), **STEPS)
    with pytest.raises(CheckpointError, match="no adapter-only export.*drop --adapter-only"):
        push_run(tmp_path / "run", "org/x", adapter_only=True)


# -- 6. two processes ------------------------------------------------------------------------------------
def _two_process_case(tuner: str, methods: str, vit_dir: Path, tmp_path: Path) -> None:
    """One process with global batch 2B and two (gloo) with B each: the same losses and weights with a tuner."""
    import os

    from safetensors.torch import load_file

    from tests.test_distributed import LOSS_RTOL, PARAM_ATOL, _free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    extra = json.dumps({"backbone": str(vit_dir), "tuner": tuner, "tuner_args": ARGS.get(tuner, {})})
    for procs in (1, 2):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_processes", str(procs), "--main_process_port", str(_free_port()),
               *(["--multi_gpu"] if procs > 1 else []), str(ROOT / "tests" / "dist" / "run_methods.py"),
               "--methods", methods, "--out", str(tmp_path / str(procs)), "--train-json", extra]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
    for method in methods.split(","):
        one, two = tmp_path / "1" / method, tmp_path / "2" / method
        h1, h2 = (json.loads((d / "history.json").read_text()) for d in (one, two))
        assert [r["loss"] for r in h1] == pytest.approx([r["loss"] for r in h2], rel=LOSS_RTOL)
        s1, s2 = (load_file(str(d / "final_state.safetensors")) for d in (one, two))
        assert s1.keys() == s2.keys() and any(tuner_key in k for k in s1 for tuner_key in ("lora_", "adaptformer"))
        for key in s1:
            assert float((s1[key] - s2[key]).abs().max()) <= 10 * PARAM_ATOL, key


def test_two_processes_train_like_one_with_lora(vit_dir: Path, tmp_path: Path) -> None:
    _two_process_case("lora", "supcon", vit_dir, tmp_path)


@pytest.mark.slow
def test_two_processes_train_like_one_with_adaptformer_every_method(vit_dir: Path, tmp_path: Path) -> None:
    _two_process_case("adaptformer", ",".join(METHODS), vit_dir, tmp_path)


def test_a_third_party_tuner_registers_and_declares_what_trains() -> None:
    """The docs' example: a tuner is a frozen dataclass with ``trains``; register_tuner makes it a --tuner name."""
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass(frozen=True)
    class LateBlocks(ltreg.Tuner):
        name: ClassVar[str] = "late-blocks-test"
        first: int = 10

        def trains(self, name, param, module):  # noqa: ANN001, ANN201
            if name.startswith("blocks."):
                return int(name.split(".")[1]) >= self.first
            return name.startswith("norm.")

    ltreg.register_tuner("late-blocks-test", LateBlocks)
    try:
        vit = make_vit()
        tuned = build_tuner("late-blocks-test", first=1).apply(vit)
        want = sum(p.numel() for n, p in vit.named_parameters() if n.startswith(("blocks.1.", "norm.")))
        assert tuned.trainable == want > 0 and tuned.added == 0
        with pytest.raises(TunerError, match="first='x' must be of type int"):
            build_tuner("late-blocks-test", first="x")
    finally:
        registry("tuners").unregister("late-blocks-test")
