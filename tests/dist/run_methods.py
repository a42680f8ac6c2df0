"""Train every named method a few steps and save losses + final weights (run under 1 or 2 processes).

Used by tests/test_distributed.py: one process with global batch 2B and two processes with B each
must give the same losses and the same parameters.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import ltreg
from ltreg.config import resolve_config
from ltreg.method import build_part
from ltreg.registry import registry
from ltreg.trainer import Trainer


class ClassSortedSampler(torch.utils.data.Sampler):
    """The method's own sampler with each epoch's records sorted by the query's class: the first half
    of a global batch holds other classes than the second (classes present on one process only)."""

    def __init__(self, inner, targets: torch.Tensor) -> None:  # noqa: ANN001
        self.inner, self.targets = inner, targets
        self.extra_role = getattr(inner, "extra_role", None)

    @classmethod
    def from_context(cls, ctx, inner: ltreg.PartRef):  # noqa: ANN001, ANN206
        return cls(build_part("sampler", inner, ctx.hparams, ctx), ctx.targets)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):  # noqa: ANN204
        records = list(self.inner)
        first = torch.tensor([r[0] if isinstance(r, tuple) else r for r in records])
        order = torch.argsort(self.targets[first], stable=True, descending=True)
        return iter([records[i] for i in order.tolist()])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", required=True, help="comma-separated names")
    parser.add_argument("--out", required=True)
    parser.add_argument("--asymmetric", action="store_true", help="class-sorted batches")
    parser.add_argument("--train-json", default="{}", help="more ltreg.train settings as JSON (backbone, tuner, ...)")
    args = parser.parse_args()
    registry("samplers").register("class-sorted-test", ClassSortedSampler)
    out = Path(args.out)
    for name in args.methods.split(","):
        spec = ltreg.get_method(name)
        if args.asymmetric:
            import dataclasses

            spec = dataclasses.replace(spec, sampler=ltreg.PartRef("class-sorted-test", inner=spec.sampler))
        # a method whose default backbone is a pretrained foundation model (LIFT) runs its own CPU check model
        small = {"quick": True} if spec.quick is not None else {}
        cfg = resolve_config(spec, {
            **small, "epochs": 2, "max_steps_per_epoch": 2, "batch_size": 16, "cpu": True,
            **({"stage2_epochs": 1} if spec.rebalance is not None else {}),  # a one-stage method refuses it
            "output_dir": str(out / name), "log_every": 1, "sync_bn": True, "lr": 0.01, "checkpoint_every": 5,
            "eval_batch_size": 512, "dataset": "digits-lt", **json.loads(args.train_json),
        })
        trainer = Trainer(cfg)
        init = {k: v.detach().float().clone() for k, v in trainer.run.model.state_dict().items()}
        result = trainer.fit()
        if trainer.run.accelerator.is_main_process:
            save_file(init, str(out / name / "init_state.safetensors"))
            state = {k: v.detach().float().contiguous() for k, v in result.model.state_dict().items()}
            save_file(state, str(out / name / "final_state.safetensors"))
            (out / name / "history.json").write_text(json.dumps(result.history))
        trainer.run.accelerator.wait_for_everyone()
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
