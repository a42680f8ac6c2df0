"""The plugin tutorial's package (examples/plugin-template) is installed, registered and trains.

``scripts/setup.sh`` installs every ``examples/*/`` with a pyproject.toml in editable mode. The
template's own tests live outside the configured testpaths, so they are loaded and run from here too.
"""

from __future__ import annotations

import importlib.util
import math

import ltreg
from ltreg.registry import registry
from tests.conftest import ROOT

NAME = "template-supcon-la"
TEMPLATE = ROOT / "examples" / "plugin-template"

_spec = importlib.util.spec_from_file_location("ltreg_template_own_tests", TEMPLATE / "tests" / "test_template_plugin.py")
_own = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_own)

# The template's own tests, collected here (naive float64 check of the loss, step form, registry lookup).
test_loss_matches_naive_float64_values_and_gradients = _own.test_loss_matches_naive_float64_values_and_gradients
test_step_form_equals_the_functional_form_on_one_process = _own.test_step_form_equals_the_functional_form_on_one_process
test_the_registry_finds_the_method_and_its_loss = _own.test_the_registry_finds_the_method_and_its_loss


def test_template_is_installed_and_registered_from_its_distribution():
    spec = ltreg.get_method(NAME)
    assert spec.name == NAME
    assert registry("methods").entry(NAME).dist == "ltreg-template"
    assert registry("losses").entry(NAME).dist == "ltreg-template"
    rows = {r["name"]: r for r in ltreg.list_methods()}
    assert rows[NAME]["dist"] == "ltreg-template" and not rows[NAME]["error"]


def test_template_trains_on_digits_lt_through_the_registry(tmp_path):
    result = ltreg.train(NAME, epochs=1, max_steps_per_epoch=2, batch_size=32, eval_batch_size=512,
                         output_dir=str(tmp_path))
    assert result.config.dataset == "digits-lt"
    row = result.history[-1]
    assert row["steps"] == 2 and all(math.isfinite(row[k]) for k in ("loss", "la_ce", "supcon"))
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "README.md").is_file()
    assert 0.0 <= result.metrics["top1"] <= 100.0
