import json
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fassl.bench.data import synthetic_data
from fassl.bench.flops import flop_counter
from fassl.bench.run import run_bench
from fassl.bench.settings import BenchSettings
from fassl.cli import main

# The training loop end to end: `make test` runs these again on the AVX2 kernels (Makefile).
pytestmark = pytest.mark.trains


def test_synthetic_data_has_the_long_tail_and_size():
    data = synthetic_data(11_165, 8)
    counts = data.class_counts
    assert sum(counts) == 11_165 == len(data.pretrain)
    assert counts == sorted(counts, reverse=True)
    assert round(counts[0] / counts[-1]) == 100  # rho of CIFAR-10-LT
    assert len(data.pool) == 10 * 1000 and len(data.val) == 10 * 500  # CIFAR's bank / val


def test_bench_cli_writes_finite_json(tmp_path):
    argv = [
        "bench", "--device", "cpu", "--width", "4", "--batch", "8", "--images", "40",
        "--image-size", "16", "--epochs", "1", "--steps", "2", "--out", str(tmp_path),
        "--name", "tiny", "--compile", "eager,auto", "--baseline", "model.proj_hidden=16",
        "model.proj_dim=8", "train.knn_every=1",
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "tiny.json").read_text())
    rows = result["rows"]
    assert [(r["compile"], r["compiled"]) for r in rows] == [("eager", False), ("auto", False)]
    row = rows[1]  # auto: eager on the CPU
    assert result["torch"] and result["device_name"]
    for key in ("step_img_s", "epoch_img_s", "full_epoch_img_s", "recipe_epoch_img_s"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["flop_per_image"] > 0 and row["peak_matmul_flop_s"] > 0
    assert row["warmup_s"] > 0
    for key in ("step_mfu", "recipe_epoch_mfu"):
        assert 0 < row[key] <= 1, key
    assert row["monitor_s"] > 0  # the kNN monitor ran and was timed
    # kornia is a dev dependency: the per-image baseline runs even without torchvision
    assert row["per_image_library"] in ("torchvision", "kornia")
    assert row["step_over_per_image"] > 0 and math.isfinite(row["step_over_per_image"])
    assert row["peak_host_rss_gib"] > 0 and row["peak_gpu_gib"] is None
    assert "| simclr | 4 | 8 | False | " in (tmp_path / "tiny.md").read_text()


def test_flop_count_grows_with_width(tmp_path):
    # A ResNet's conv FLOP grow about 4x when the width doubles.
    s = BenchSettings(
        widths=[4, 8], batch=8, device="cpu", precision="fp32", images=16, image_size=8,
        epochs=1, steps=1, out=str(tmp_path), overrides=["model.proj_hidden=16"],
    )  # fmt: skip
    rows = run_bench(s)["rows"]
    assert 3.0 < rows[1]["flop_per_image"] / rows[0]["flop_per_image"] < 4.2


def _forward_backward_flop(conv: nn.Module, x: torch.Tensor, counter) -> tuple[int, int]:
    with counter as c:
        y = conv(x)
    forward = c.get_total_flops()
    with counter as c:
        y.sum().backward()
    return forward, c.get_total_flops()


@pytest.mark.parametrize("input_grad", [True, False])
def test_depthwise_conv_backward_costs_what_its_forward_costs(input_grad):
    # 4 channels, 4 groups, 3x3, 5x5 output, batch 2: 2 * (4*1*3*3) * 2 * 25 = 3600 FLOP;
    # each gradient (input, weight) costs as much again. torch's own counter says 14,400
    # for the weight gradient alone (the groups left out).
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    x = torch.randn(2, 4, 5, 5, requires_grad=input_grad)
    forward, backward = _forward_backward_flop(conv, x, flop_counter())
    assert forward == 3600
    assert backward == 3600 * (2 if input_grad else 1)


@pytest.mark.parametrize(
    "conv, shape",
    [
        (nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 6, 6)),
        (nn.ConvTranspose2d(4, 6, 2, stride=2), (2, 4, 3, 3)),
    ],
)
def test_ungrouped_conv_backward_agrees_with_torch(conv, shape):
    x = torch.randn(*shape, requires_grad=True)
    ours = _forward_backward_flop(conv, x, flop_counter())
    conv.zero_grad()
    theirs = _forward_backward_flop(conv, x, FlopCounterMode(display=False))
    assert ours == theirs and ours[1] == 2 * ours[0]
