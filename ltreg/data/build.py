"""Building a run's data: the registered data set builder called with the run's recorded arguments.

:class:`DataArgs` is what a run records about its data (``config.json`` keeps it), so that
``ltreg eval`` rebuilds exactly the data the model was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ltreg.data.lt import LTData
from ltreg.registry import registry


@dataclass
class DataArgs:
    """The builder's name and every argument it is called with (``None``: the builder's default)."""

    dataset: str
    root: str | None = None
    imbalance: float | None = None
    profile: str | None = None
    seed: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the builder: the seed, the extra ones, and each of the others that is set."""
        out: dict[str, Any] = {"seed": self.seed, **self.kwargs}
        for key in ("root", "imbalance", "profile"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def build_data(args: DataArgs) -> LTData:
    """The registered data set builder called with ``args``; the training split is checked."""
    builder = registry("datasets").get(args.dataset)
    data = builder(**args.call_kwargs())
    data.train.check_train()
    return data
