"""Smoke runs of the issue-21 scale checks: ``benchmarks/gpu_check.sh --cpu-smoke`` and
``benchmarks/throughput.py --mode cpu1 --quick`` exit 0 and print their ratio lines.

They check that the scripts run end to end, not the figures (a shared CI machine makes those noise).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHON": sys.executable}
FASHION = "/usr/share/datasets/fashion-mnist"


def _run(cmd: list[str], timeout: float) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}"
    return out


@pytest.mark.slow
def test_gpu_check_cpu_smoke():
    out = _run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke"], timeout=900)
    assert re.search(r"^ratio\[cuda\] = ltreg/plain = \d+\.\d+", out, re.M), out[-3000:]
    assert re.search(r"^ratio\[data\] = default workers/num_workers=0 = \d+\.\d+", out, re.M), out[-3000:]
    assert "methods ran" in out and "all checks passed" in out
    assert re.search(r"^ratio\[lora/plain-peft\] images/s = \d+\.\d+", out, re.M), out[-3000:]  # (d) tuners


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="needs the Debian package dataset-fashion-mnist")
def test_throughput_cpu1_quick():
    out = _run([sys.executable, "benchmarks/throughput.py", "--mode", "cpu1", "--quick"], timeout=600)
    assert re.search(r"^ratio\[cpu1\] = ltreg/plain = \d+\.\d+", out, re.M), out[-3000:]
    assert re.search(r"^cpu1 +\d+\.\d +\d+\.\d +\d+\.\d{3} +>=0\.95 +(pass|FAIL)$", out, re.M), out[-3000:]
