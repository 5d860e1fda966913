"""k nearest neighbours of every image: fassl.neighbours' exact blocked search vs the
approximate one (faiss-cpu IVF-Flat), wall time and recall@k.

The features are random and clustered (Gaussian clusters around random centres), the
search is the one ``fassl rare`` runs: each of N images against all N, itself excluded.
Recall@k is measured against the exact answer on a seeded sample of queries (the exact
search of the whole set is timed only when ``--exact-all``: at 200k images it takes
minutes), so the exact time below the largest N is the full search, above it an
estimate from the sample (marked). Both run on the CPU threads torch and faiss choose.

    python benchmarks/bench_knn.py                                  # about a minute
    python benchmarks/bench_knn.py --sizes 20000,100000,200000 --dims 64,512
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from fassl.neighbours import (
    approximate_knn,
    exact_knn,
    faiss_available,
    inverted_lists,
)


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    labels = torch.randint(0, clusters, (n,), generator=g)
    return centres[labels] + spread * torch.randn(n, dim, generator=g)


def exact_sample(feats: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """Exact neighbours of the sampled rows (themselves excluded) and the seconds taken."""
    start = time.perf_counter()
    _, idx = exact_knn(feats[rows], feats, k + 1)
    seconds = time.perf_counter() - start
    keep = idx != rows.unsqueeze(1)
    keep[~(~keep).any(dim=1), -1] = False  # a row not found itself drops its last
    return idx[keep].view(len(rows), k), seconds


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist(), strict=True))
    return hits / truth.numel()


def run(n: int, dim: int, k: int, sample: int, exact_all: bool, args: argparse.Namespace) -> None:
    feats = clustered(n, dim, args.clusters, args.spread, seed=0)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: min(sample, n)]
    truth, sample_seconds = exact_sample(feats, rows, k)
    if exact_all:
        start = time.perf_counter()
        exact_knn(feats, feats, k, exclude_self=True)
        exact = f"{time.perf_counter() - start:8.1f}s"
    else:
        exact = f"~{sample_seconds * n / len(rows):7.0f}s"  # from the sample's rate
    line = f"N={n:>7,} D={dim:>4} k={k}  exact {exact}"
    if faiss_available():
        start = time.perf_counter()
        _, idx = approximate_knn(feats, feats, k, exclude_self=True)
        seconds = time.perf_counter() - start
        line += f"  approximate {seconds:7.1f}s ({inverted_lists(n)} lists)"
        line += f"  recall@{k} {recall(idx[rows], truth):.4f} on {len(rows):,} queries"
    else:
        line += "  approximate: faiss-cpu not installed (pip install 'fassl[ann]')"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000", help="comma-separated N")
    parser.add_argument("--dims", default="64,512", help="comma-separated feature dims")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--spread", type=float, default=1.0, help="noise std around a centre")
    parser.add_argument("--sample", type=int, default=2000, help="queries checked for recall")
    parser.add_argument(
        "--exact-all",
        type=int,
        default=50_000,
        help="time the whole exact search up to this N (above: estimated from the sample)",
    )
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads; clusters "
        f"{args.clusters}, spread {args.spread}"
    )
    for dim in (int(d) for d in args.dims.split(",")):
        for n in (int(s) for s in args.sizes.split(",")):
            run(n, dim, args.k, args.sample, n <= args.exact_all, args)


if __name__ == "__main__":
    main()
