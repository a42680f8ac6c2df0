"""--data-arg values as YAML scalars, builder arguments checked, defaults that travel with the builder,
one split-file wrapper, the summary line build_data returns."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import ltreg
from ltreg.cli import main
from ltreg.config import TrainConfig, resolve_config
from ltreg.data import builders as B
from ltreg.data.build import build_data, dataset_defaults, parse_data_arg, parse_data_args, with_defaults
from ltreg.errors import ConfigError, DataArgumentError, UnknownNameError
from ltreg.method import get_method
from ltreg.registry import registry

#: The table config.py held before defaults moved onto the builders.
OLD_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits-lt": {"backbone": "resnet8", "epochs": 30, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4},
    "fashion-mnist-lt": {"backbone": "resnet8", "epochs": 30, "batch_size": 128, "lr": 0.1},
    "cifar10-lt": {"backbone": "resnet32", "epochs": 200, "batch_size": 128, "lr": 0.1, "weight_decay": 2e-4,
                   "warmup_epochs": 5},
    "cifar100-lt": {"backbone": "resnet32", "epochs": 200, "batch_size": 128, "lr": 0.1, "weight_decay": 2e-4,
                    "warmup_epochs": 5},
    "imagenet-lt": {"backbone": "resnet50", "epochs": 90, "batch_size": 256, "lr": 0.1},
    "places-lt": {"backbone": "resnet152.tv_in1k", "pretrained": True, "epochs": 30, "batch_size": 256, "lr": 0.02},
    "inat2018": {"backbone": "resnet50", "epochs": 90, "batch_size": 256, "lr": 0.1, "weight_decay": 1e-4},
    "hf-lt": {},
    "imagefolder-lt": {},
}


def _folder(root: Path, counts: dict[str, int], size: int = 10) -> Path:
    rng = np.random.RandomState(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


# -- --data-arg --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("image_size=32", 32), ("test_fraction=0.25", 0.25), ("lr=1e-3", 1e-3), ("resize=true", True),
     ("many_thr=null", None), ("split_dir=", None), ("split_dir=/data/splits", "/data/splits"),
     ("label_column=label", "label"), ("name='0012'", "0012"), ("day=2024-01-02", "2024-01-02"),
     (" image_size = 32 ", 32)],
)
def test_data_arg_values_are_yaml_scalars(text: str, value: Any) -> None:
    name, parsed = parse_data_arg(text)
    assert parsed == value and type(parsed) is type(value) and name == text.split("=")[0].strip()


@pytest.mark.parametrize(
    ("text", "match"),
    [("image_size", "expects NAME=VALUE"), ("sizes=[1, 2]", "a list, but data arguments are single values"),
     ("opts={a: 1}", "a dict"), ("x=!!python/object/apply:os.system [ls]", "YAML tags are not accepted"),
     ("x=!!str 5", "YAML tags"), ("x=*alias", "not a YAML scalar"), ("2x=1", "not an argument name")],
)
def test_bad_data_arg_values_are_named(text: str, match: str) -> None:
    with pytest.raises(DataArgumentError, match=match):
        parse_data_arg(text)


def test_data_arg_given_twice() -> None:
    assert parse_data_args(["a=1", "b=x"]) == {"a": 1, "b": "x"}
    with pytest.raises(DataArgumentError, match="a given twice"):
        parse_data_args(["a=1", "a=2"])


def test_unknown_and_mistyped_builder_arguments(tmp_path: Path) -> None:
    root = str(_folder(tmp_path / "f", {"a": 6, "b": 6}))
    with pytest.raises(DataArgumentError, match=r"no argument 'image_sise'. Did you mean image_size\?.*"
                                                r"on_bad_image='skip', test_fraction=0.2.*image_size=None"):
        build_data(TrainConfig(dataset="imagefolder-lt", data_root=root, dataset_kwargs={"image_sise": 8}).data_args())
    with pytest.raises(DataArgumentError, match=r"image_size='8' must be of type int"):
        build_data(TrainConfig(dataset="imagefolder-lt", data_root=root, dataset_kwargs={"image_size": "8"}).data_args())
    with pytest.raises(DataArgumentError, match="'imagefolder-lt' needs root: pass --data-root"):
        build_data(TrainConfig(dataset="imagefolder-lt").data_args())
    ltreg.register_dataset("toy-fixed-lt", lambda root=None, seed=0: B.digits_lt(seed=seed))
    try:
        with pytest.raises(DataArgumentError, match="'toy-fixed-lt': --imbalance does not apply to it"):
            build_data(TrainConfig(dataset="toy-fixed-lt", imbalance=5.0).data_args())
    finally:
        registry("datasets").unregister("toy-fixed-lt")


def test_cli_data_arg_image_size_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The user's ``--data-arg image_size=32`` raised a TypeError: values arrived as strings."""
    root = str(_folder(tmp_path / "f", {"a": 8, "b": 8}))
    base = ["train", "--method", "ce", "--dataset", "imagefolder-lt", "--data-root", root, "--epochs", "1",
            "--max-steps-per-epoch", "1", "--batch-size", "4", "--output-dir", str(tmp_path / "run")]
    assert main(base + ["--data-arg", "image_size=12", "--data-arg", "resize=true"]) == 0
    assert main(base + ["--data-arg", "image_sise=12"]) == 2
    err = capsys.readouterr().err
    assert "no argument 'image_sise'. Did you mean image_size?" in err and "test_fraction=0.2" in err
    assert main(base + ["--data-arg", "image_size=[12]"]) == 2
    assert "a list, but data arguments are single values" in capsys.readouterr().err


# -- defaults travel with the builder -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OLD_DEFAULTS))
def test_builtin_defaults_unchanged(name: str) -> None:
    assert dataset_defaults(name) == OLD_DEFAULTS[name]


def test_plugin_data_set_brings_its_defaults() -> None:
    @with_defaults(backbone="resnet20", epochs=3, batch_size=16)
    def toy_lt(root: str | None = None, imbalance: float = 10.0, profile: str = "exp", seed: int = 0) -> Any:
        return B.digits_lt(imbalance=imbalance, profile=profile, seed=seed)

    ltreg.register_dataset("toy-own-lt", toy_lt)
    try:
        cfg = resolve_config(get_method("ce"), {"dataset": "toy-own-lt", "epochs": 2}).cfg
        assert (cfg.backbone, cfg.epochs, cfg.batch_size, cfg.lr) == ("resnet20", 2, 16, TrainConfig.lr)
        ltreg.register_dataset("toy-bad-lt", with_defaults(epoch=3)(toy_lt))
        with pytest.raises(ConfigError, match="unknown key 'epoch' in the defaults of the data set toy-bad-lt. "
                                              "Did you mean epochs"):
            resolve_config(get_method("ce"), {"dataset": "toy-bad-lt"})
    finally:
        registry("datasets").unregister("toy-own-lt")
        registry("datasets").unregister("toy-bad-lt")
    with pytest.raises(UnknownNameError, match="digits-lt"):
        dataset_defaults("digit-lt")


# -- one split-file wrapper; the summary line ------------------------------------------------------


def test_split_file_benchmarks_share_one_wrapper() -> None:
    builders = (B.imagenet_lt, B.places_lt, B.inat2018)
    assert len({b.__code__ for b in builders}) == 1
    assert len({str(inspect.signature(b)) for b in builders}) == 1
    assert [b.__name__ for b in builders] == ["imagenet_lt", "places_lt", "inat2018"]
    assert all(b.__doc__ for b in builders)


def test_summary_line_of_a_builtin() -> None:
    data = build_data(TrainConfig(dataset="digits-lt").data_args())
    assert data.summary == (
        "digits-lt: 472 training images in 10 classes (counts 140..7; many > 60: 3, few < 20: 4, medium: 3), "
        "300 test images, 1-channel 8 px"
    )
