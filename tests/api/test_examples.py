"""The three scripts of examples/ run as a user would run them, at a tiny size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(script: str, *args: str) -> str:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_a_loss_in_your_own_loop():
    out = run("loss_in_your_loop.py", "--steps", "3")
    assert "step 2: loss" in out and "re-balancing weights: mean 1.000" in out


def test_a_method_trained_on_your_tensors():
    out = run("train_on_your_tensors.py", "--epochs", "1", "--width", "4")
    assert "simclr: standard probe All" in out and "features: (8, 32)" in out


@pytest.mark.slow
def test_an_export_for_a_downstream_classifier(tmp_path):
    out = run("export_for_a_classifier.py", "--epochs", "1", "--out", str(tmp_path))
    assert "logistic regression" in out and "resnet18 width 8: 64-d features" in out
