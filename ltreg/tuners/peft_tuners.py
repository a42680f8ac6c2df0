"""``lora``, ``dora`` and ``ia3`` through ``peft`` on timm backbones.

The layers to adapt follow the architecture family (:func:`default_targets`): in a transformer the
attention ``qkv`` / ``proj`` and MLP ``fc1`` / ``fc2`` linears of every block (IA3: ``qkv`` and the
MLP's ``fc2``, whose input it scales), in a CNN the convolutions of the residual blocks (not the
stem, not depthwise ones). ``target_modules`` (a regular expression matched against whole module
names) chooses others. peft's layers are injected in place (``peft.inject_adapter_in_model``), so the
backbone stays the timm model with its names, ``forward``, ``group_matcher`` and layer decay; the
adapter is peft's ``default``. ``adapter_config`` / ``adapter_state`` are peft's own file formats, so an
adapter-only export also loads with ``PeftModel.from_pretrained`` on the timm base.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from ltreg.errors import TunerError
from ltreg.tuners.base import Tuner, arch_name, backbone_family

#: Prefix of the adapter's keys in peft's ``adapter_model.safetensors`` (a ``PeftModel`` around the timm model).
PEFT_PREFIX = "base_model.model."
_BLOCK = r"(?:.*\.)?blocks\.\d+\."
_CNN_BLOCK = r"(?:.*\.)?(?:layer\d+\.\d+|stages\.\d+\.blocks\.\d+|stages\.\d+\.\d+)\."
#: Default target modules per family and tuner kind: (targets, IA3 feed-forward modules).
TARGETS = {
    ("transformer", "lora"): (_BLOCK + r"(?:attn\.(?:qkv|proj)|mlp\.(?:fc1|fc2))", None),
    ("transformer", "ia3"): (_BLOCK + r"(?:attn\.qkv|mlp\.fc2)", _BLOCK + r"mlp\.fc2"),
    ("cnn", "lora"): (_CNN_BLOCK + r"conv\w*", None),
    ("cnn", "ia3"): (_CNN_BLOCK + r"conv\w*", _CNN_BLOCK + r"conv\w*"),
}


def default_targets(backbone: nn.Module, kind: str, pattern: str | None) -> tuple[list[str], str]:
    """Whole names of the Linear / Conv2d modules to adapt, and what chose them (for messages)."""
    family = backbone_family(backbone)
    if pattern is None:
        if (family, kind) not in TARGETS:
            return [], f"the {family} family has no default targets"
        pattern, where = TARGETS[family, kind][0], f"the {family} default {TARGETS[family, kind][0]!r}"
    else:
        where = f"target_modules={pattern!r}"
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise TunerError(f"tuner {kind}: target_modules={pattern!r} is not a regular expression ({exc})") from exc
    names = [n for n, m in backbone.named_modules()
             if regex.fullmatch(n) and (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))]
    return names, where


@dataclass(frozen=True)
class _PeftTuner(Tuner):
    """A peft tuner: its ``peft`` config, targets chosen per family, merged with peft's own ``merge``."""

    structural: ClassVar[bool] = True
    mergeable: ClassVar[bool] = True
    kind: ClassVar[str] = "lora"
    keys: ClassVar[tuple[str, ...]] = ("lora_",)

    def targets(self, backbone: nn.Module) -> list[str]:
        names, where = default_targets(backbone, self.kind, self.target_modules)
        if not names:
            raise TunerError(
                f"tuner {self.name} finds no layers to adapt in the backbone {arch_name(backbone)} ({where} matches "
                f"no Linear or non-depthwise Conv2d module). Pass --tuner-arg target_modules=REGEX (a regular "
                f"expression over module names, e.g. 'blocks\\.\\d+\\.attn\\.qkv'), or pick --tuner bitfit / linear / "
                f"full")
        return names

    def check(self, backbone: nn.Module) -> None:
        self.targets(backbone)

    def peft_config(self, targets: list[str], family: str) -> Any:
        raise NotImplementedError

    def add_modules(self, backbone: nn.Module) -> None:
        import peft

        config = self.peft_config(self.targets(backbone), backbone_family(backbone))
        peft.inject_adapter_in_model(config, backbone, adapter_name="default")
        backbone._ltreg_peft_config = config  # noqa: SLF001 - the adapter's peft config, for its export

    def is_added(self, key: str) -> bool:
        return any(k in key for k in self.keys)

    def trains(self, name: str, param: nn.Parameter, module: nn.Module) -> bool:
        return self.is_added(name)

    def merge(self, backbone: nn.Module) -> nn.Module:
        from peft.tuners.tuners_utils import BaseTunerLayer

        plain = copy.deepcopy(backbone)
        for name, module in list(plain.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge(safe_merge=True)
                parent, _, attr = name.rpartition(".")
                setattr(plain.get_submodule(parent) if parent else plain, attr, module.get_base_layer())
        for attr in ("peft_config", "_ltreg_peft_config"):
            if attr in plain.__dict__:
                delattr(plain, attr)
        return plain

    def adapter_state(self, backbone: nn.Module) -> dict[str, Tensor]:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(backbone, adapter_name="default")
        return {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_adapter_state(self, backbone: nn.Module, state: dict[str, Tensor], label: str) -> None:
        from peft import set_peft_model_state_dict

        from ltreg.tuners.base import _check_keys

        _check_keys(self.adapter_state(backbone), state, label)
        result = set_peft_model_state_dict(backbone, {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()},
                                           adapter_name="default")
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise TunerError(f"the adapter weights of {label} do not fit this backbone: unexpected {unexpected[:3]}")

    def adapter_config(self, backbone: nn.Module, base: str) -> dict[str, Any]:
        """peft's ``adapter_config.json`` for this adapter on the timm model ``base``."""
        config = copy.copy(backbone._ltreg_peft_config)  # noqa: SLF001
        config.base_model_name_or_path = base
        out = config.to_dict()
        out["target_modules"] = sorted(out["target_modules"])
        return out


@dataclass(frozen=True)
class LoRA(_PeftTuner):
    """LoRA (Hu et al. 2022): W + (alpha / r) B A beside each target; B = 0, so the model is unchanged at step 0."""

    name: ClassVar[str] = "lora"
    r: int = field(default=8, metadata={"min": 1, "max": 4096})
    alpha: float = field(default=16.0, metadata={"min": 0, "min_exclusive": True})
    dropout: float = field(default=0.0, metadata={"min": 0, "max": 0.99})
    target_modules: str | None = None

    def peft_config(self, targets: list[str], family: str) -> Any:
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          use_dora=self.name == "dora")


@dataclass(frozen=True)
class DoRA(LoRA):
    """DoRA (Liu et al. 2024): LoRA's direction update with a learned magnitude per output; unchanged at step 0."""

    name: ClassVar[str] = "dora"


@dataclass(frozen=True)
class IA3(_PeftTuner):
    """IA3 (Liu et al. 2022): learned scaling vectors (initialised to 1) on the targets' outputs, or on the
    inputs of the feed-forward ones (the MLP's ``fc2``)."""

    name: ClassVar[str] = "ia3"
    kind: ClassVar[str] = "ia3"
    keys: ClassVar[tuple[str, ...]] = ("ia3_l",)
    target_modules: str | None = None
    feedforward_modules: str | None = None

    def peft_config(self, targets: list[str], family: str) -> Any:
        from peft import IA3Config

        pattern = self.feedforward_modules or TARGETS.get((family, "ia3"), (None, None))[1]
        feed = [t for t in targets if pattern and re.fullmatch(pattern, t)]
        return IA3Config(target_modules=targets, feedforward_modules=feed)
