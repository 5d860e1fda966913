"""Two CPU processes (gloo) against one process on the full batch.

One spawn runs every check in both ranks; each rank saves its results to a file and
the tests assert in the parent, which never joins a process group itself.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fassl import losses, rebalance

WORLD = 2
N_PER_RANK = 4
TEMPERATURE = 0.2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    n = WORLD * N_PER_RANK
    return {
        "z1": torch.randn(n, 5, generator=gen, dtype=torch.float64),
        "z2": torch.randn(n, 5, generator=gen, dtype=torch.float64),
        "log_phi": torch.randn(n, generator=gen) * 3,
        "scores": torch.randn(n, 3, generator=gen),
    }


def _worker(rank: int, port: int, inputs: dict[str, torch.Tensor], out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        part = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        z1 = inputs["z1"][part].clone().requires_grad_(True)
        z2 = inputs["z2"][part].clone().requires_grad_(True)
        loss = losses.nt_xent(z1, z2, TEMPERATURE)
        loss.backward()
        result: dict[str, Any] = {
            "loss": loss.detach(),
            "grad1": z1.grad,
            "grad2": z2.grad,
            "weights": rebalance.normalize_weights(inputs["log_phi"][part], 1.0, global_stats=True),
            "local_weights": rebalance.normalize_weights(
                inputs["log_phi"][part], 1.0, global_stats=False
            ),
            "codes": losses.sinkhorn(inputs["scores"][part], epsilon=0.5, iterations=3),
        }
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("dist")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(rank, port, _inputs(), str(out_dir)))
        for rank in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.slow
def test_nt_xent_split_across_ranks_matches_one_process(ranks: list[dict[str, Any]]) -> None:
    data = _inputs()
    z1 = data["z1"].clone().requires_grad_(True)
    z2 = data["z2"].clone().requires_grad_(True)
    full = losses.nt_xent(z1, z2, TEMPERATURE)  # mean over all 2N anchors
    full.backward()
    assert z1.grad is not None and z2.grad is not None
    # Equal local batches: the mean of the ranks' losses (2N/2 anchors each) is the full loss.
    mean_over_ranks = sum(r["loss"] for r in ranks) / WORLD
    assert torch.allclose(mean_over_ranks, full.detach().float(), atol=1e-6)
    # Each rank's backward (through the gather) returns d(sum of all ranks' losses)/d(slice);
    # DDP then averages over ranks, i.e. rank grad / WORLD = d(mean over ranks)/d(slice),
    # which must equal that slice of the one-process gradient.
    for rank, result in enumerate(ranks):
        part = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        assert torch.allclose(result["grad1"] / WORLD, z1.grad[part], atol=1e-6)
        assert torch.allclose(result["grad2"] / WORLD, z2.grad[part], atol=1e-6)


def test_global_weight_normalisation_matches_one_process(ranks: list[dict[str, Any]]) -> None:
    data = _inputs()
    full = rebalance.normalize_weights(data["log_phi"], 1.0, global_stats=False)
    gathered = torch.cat([r["weights"] for r in ranks])
    assert torch.allclose(gathered, full, rtol=1e-5, atol=1e-6)
    assert gathered.mean().item() == pytest.approx(1.0, abs=1e-5)
    # Per-process statistics average 1 on each rank instead, and differ from the global ones.
    for result in ranks:
        assert result["local_weights"].mean().item() == pytest.approx(1.0, abs=1e-5)
    assert not torch.allclose(torch.cat([r["local_weights"] for r in ranks]), full)


def test_sinkhorn_split_across_ranks_matches_one_process(ranks: list[dict[str, Any]]) -> None:
    data = _inputs()
    full = losses.sinkhorn(data["scores"], epsilon=0.5, iterations=3)
    gathered = torch.cat([r["codes"] for r in ranks])
    assert torch.allclose(gathered, full, atol=1e-6)
    # A rank alone would balance its own half only: the global column sums matter.
    local_only = losses.sinkhorn(data["scores"][:N_PER_RANK], epsilon=0.5, iterations=3)
    assert not torch.allclose(ranks[0]["codes"], local_only, atol=1e-4)
