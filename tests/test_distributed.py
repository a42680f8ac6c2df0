"""One process with global batch 2B and two real processes (gloo on CPU) with B each train alike.

Parametrized over every registered method, third-party plugins included, plus an asymmetric case
where the two processes see different classes (class-sorted batches).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import ltreg
from tests.conftest import ROOT

SCRIPT = ROOT / "tests" / "dist" / "run_methods.py"
METHODS = sorted(r["name"] for r in ltreg.list_methods() if not r["error"])
# Float32 reductions run in another order on two processes; sharp softmaxes (tau = 0.05) amplify that.
# A missing gather or a per-process normalisation shows as a difference of the size of the update itself.
LOSS_RTOL = 1e-4
PARAM_ATOL = 2e-5
UPDATE_RTOL = 0.1  # of the parameter's largest change over the run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(procs: int, out, extra: list[str], env: dict) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", str(procs), "--main_process_port", str(_free_port())]
    if procs > 1:
        cmd.append("--multi_gpu")
    cmd += [str(SCRIPT), "--methods", ",".join(METHODS), "--out", str(out), *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module", params=["shuffled", "asymmetric"])
def runs(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(request.param)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    extra = ["--asymmetric"] if request.param == "asymmetric" else []
    _run(1, base / "one", extra, env)
    _run(2, base / "two", extra, env)
    return base


@pytest.mark.parametrize("method", METHODS)
def test_one_process_equals_two(runs, method):
    one, two = runs / "one" / method, runs / "two" / method
    h1 = json.loads((one / "history.json").read_text())
    h2 = json.loads((two / "history.json").read_text())
    assert len(h1) == len(h2)
    for r1, r2 in zip(h1, h2):
        assert r1["loss"] == pytest.approx(r2["loss"], rel=LOSS_RTOL), (r1, r2)
    s1 = load_file(str(one / "final_state.safetensors"))
    s2 = load_file(str(two / "final_state.safetensors"))
    assert s1.keys() == s2.keys()
    init = load_file(str(one / "init_state.safetensors"))
    for key in s1:
        moved = float((s1[key] - init[key]).abs().max()) if key in init and init[key].shape == s1[key].shape else 0.0
        diff = float((s1[key] - s2[key]).abs().max())
        assert diff <= max(PARAM_ATOL, UPDATE_RTOL * moved), f"{key}: differs by {diff:.2e}, moved by {moved:.2e}"
    keys = [k for k in s1 if k in init and init[k].shape == s1[k].shape]
    assert any(not torch.equal(init[k], s1[k]) for k in keys), "training did not change the weights"


def test_two_processes_on_a_cpu_machine_need_no_cpu_flag(tmp_path):
    """Without --cpu, two launched processes train one run together (gloo), not two runs into one folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", "2", "--main_process_port", str(_free_port()), "--multi_gpu",
           "-m", "ltreg", "train", "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "32",
           "--eval-batch-size", "512", "--output-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout and proc.stdout.count("run folder:") == 1
    assert (tmp_path / "run" / "model.safetensors").is_file()
