"""The training loop under 2 CPU processes (gloo) ends where one process ends.

BatchNorm statistics are per process, so the comparison uses BN-free encoders (a linear
one, and a timm ViT, which normalises with LayerNorm); the augmentation is switched to
the identity so both runs see the same pixels.
"""

import importlib.util
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fassl.methods.simclr import SimCLR
from fassl.models import Encoder, build_backbone
from fassl.runtime import Runtime
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

# The training loop end to end: `make test` runs these again on the AVX2 kernels (Makefile).
pytestmark = pytest.mark.trains

IDENTITY_AUG = (
    "augment.crop_scale_min=1.0",
    "augment.flip_p=0.0",
    "augment.jitter_p=0.0",
    "augment.grayscale_p=0.0",
)


VIT = {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 12, "num_heads": 2}


def bn_free_simclr(kind: str) -> SimCLR:
    torch.manual_seed(0)
    if kind == "vit":
        backbone = build_backbone("timm:vit_tiny_patch16_224", kwargs=VIT)
    else:
        backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 12))
        backbone.out_dim = 12  # type: ignore[attr-defined]
    return SimCLR(Encoder(backbone, nn.Linear(12, 6)), temperature=0.5)


def train(run_dir, kind: str) -> dict[str, torch.Tensor]:
    cfg = tiny_config(run_dir, *IDENTITY_AUG, "optim.epochs=2", "train.memory_format=contiguous")
    method = bn_free_simclr(kind)
    Trainer(method, tiny_data(), cfg, cfg.optim, run_dir, Runtime.cpu(), "ddp").fit()
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def worker(rank: int, port: int, run_dir: str, out: str, kind: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    state = train(run_dir, kind)
    if rank == 0:
        torch.save(state, out)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    [
        "linear",
        pytest.param(
            "vit",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("timm") is None, reason="timm is not installed"
            ),
        ),
    ],
)
def test_two_processes_match_one(tmp_path, kind):
    single = train(tmp_path / "single", kind)
    out = tmp_path / "ddp.pt"
    args = (free_port(), str(tmp_path / "ddp"), str(out), kind)
    mp.spawn(worker, args=args, nprocs=2, join=True)
    double = torch.load(out)
    for k, v in single.items():
        assert torch.allclose(v, double[k], atol=1e-5), k
