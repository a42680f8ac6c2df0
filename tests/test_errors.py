"""Bad input gets an error that names the thing and the fix, before any training work starts."""

from __future__ import annotations

import pytest
import torch

import ltreg
from ltreg.config import load_yaml, resolve_config
from ltreg.data.lt import LTDataset, TensorSource
from ltreg.errors import ConfigError, DataError, ModelConfigError, UnknownNameError
from ltreg.samplers import KGlobalSampler


def _dataset(targets, num_classes=3):
    n = len(targets)
    return LTDataset("toy", TensorSource(torch.zeros(n, 1, 4, 4, dtype=torch.uint8)), torch.as_tensor(targets),
                     num_classes=num_classes, class_names=[str(i) for i in range(num_classes)], channels=1, image_size=4)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "ldam_drv"}, "ldam-drw"),
    ({"dataset": "cifar100lt"}, "cifar100-lt"),
    ({"backbone": "resnet302"}, "resnet"),
    ({"recipe": "cifar100-lt-if101"}, "cifar100-lt-if100"),
    ({"imbalance": 0.5}, "imbalance must be >= 1"),
    ({"epochs": -1}, "epochs must be >= 1"),
    ({"epochs": 0}, "ltreg eval"),
    ({"batch_size": "many"}, "batch_size"),
    ({"hparams": {"tau": "-1"}, "method": "logit-adjust"}, "tau"),
    ({"hparams": {"taw": "1"}, "method": "logit-adjust"}, "Did you mean tau"),
])
def test_bad_configuration_is_named(tmp_path, kwargs, match):
    kwargs = {"output_dir": str(tmp_path), "epochs": 1, **kwargs}
    with pytest.raises((ConfigError, UnknownNameError, ModelConfigError, DataError, ValueError), match=match):
        ltreg.train(kwargs.pop("method", "ce"), **kwargs)
    assert not (tmp_path / "checkpoints").exists()


def test_labels_out_of_range_non_integer_and_empty_class():
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\], found 0..5"):
        _dataset([0, 1, 5])
    with pytest.raises(DataError, match="labels must be integers"):
        _dataset(torch.tensor([0.0, 1.5, 2.0]))
    with pytest.raises(DataError, match="1 class\\(es\\) have no training images: 2"):
        _dataset([0, 0, 1]).check_train()


def test_k_global_with_a_singleton_class_names_the_class_and_the_fix():
    with pytest.raises(DataError, match=r"class\(es\) .*2.* single image.*allow_self=True"):
        KGlobalSampler(torch.tensor([0, 0, 0, 1, 1, 2]), num_classes=3, k=3)


def test_yaml_with_unknown_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        load_yaml(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(path)


def test_batch_larger_than_epoch_is_named(tmp_path):
    with pytest.raises(ConfigError, match="fewer than one batch"):
        ltreg.train("ce", output_dir=str(tmp_path), epochs=1, batch_size=4096)


def test_hparam_types_from_strings():
    spec = ltreg.get_method("supcon")
    hp = resolve_config(spec, {"hparams": {"temperature": "0.2", "stage2_epochs": "3"}}).hparams
    assert hp.temperature == 0.2 and hp.stage2_epochs == 3
    with pytest.raises(ConfigError, match="stage2_epochs"):
        spec.hparams.replace(stage2_epochs="2.5")
