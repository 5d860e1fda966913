"""Nearest neighbours by cosine similarity, in bounded memory whatever the number of images.

``knn(queries, bank, k, exclude_self)`` -> (similarities, indices), each (N, k), most
similar first. Two searches:

- exact, blocked: a block of queries against a block of the bank at a time (at most
  ``BLOCK_ELEMENTS`` similarities held), keeping a running top-k, on the device of the
  tensors. Ties go to the smaller bank index, so the answer equals a sort of the full
  N x M matrix element for element, whatever the blocks.
- approximate: faiss-cpu's inverted-file index (``pip install 'fassl[ann]'``), used when
  ``approximate_above`` is given, the bank holds more rows than that and faiss is
  installed; without faiss the search is exact. ``Neighbours.note`` says which ran, for
  the outputs' notes.

``exclude_self`` means row i of the queries is row i of the bank: it is not its own
neighbour (a duplicate image still is: it has another index).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK_ELEMENTS = 1 << 24  # similarities held at once by the exact search (64 MB float32)
BANK_BLOCK = 16384  # bank rows per block of the exact search
APPROXIMATE_ABOVE = 50_000  # bank rows above which a tool searches approximately (faiss)
PROBED_FRACTION = 32  # the approximate search probes 1/32 of its lists (at least MIN_PROBES)
MIN_PROBES = 16


@dataclass(frozen=True)
class Neighbours:
    """The k nearest bank rows of each query, most similar first, and how they were found."""

    similarities: Tensor  # (N, k) float32 cosine
    indices: Tensor  # (N, k) int64 bank rows
    note: str  # which search ran, for the outputs' notes
    approximate: bool = False


def faiss_available() -> bool:
    """Whether faiss (the ``ann`` extra, faiss-cpu) can be imported."""
    return importlib.util.find_spec("faiss") is not None


def _check(queries: Tensor, bank: Tensor, k: int, exclude_self: bool) -> None:
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(
            f"queries and bank must be (N, D) and (M, D), got {tuple(queries.shape)} "
            f"and {tuple(bank.shape)}"
        )
    if exclude_self and queries.shape[0] != bank.shape[0]:
        raise ValueError(
            f"exclude_self needs the queries to be the bank: {queries.shape[0]} queries, "
            f"{bank.shape[0]} bank rows"
        )
    others = bank.shape[0] - int(exclude_self)
    if not 1 <= k <= others:
        what = "other bank rows" if exclude_self else "the bank size"
        raise ValueError(f"k must be in [1, {others}] ({what}), got {k}")


def _in_order(sims: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Columns of each row sorted by similarity, descending, ties by index, ascending."""
    by_index = idx.argsort(dim=1)
    sims, idx = sims.gather(1, by_index), idx.gather(1, by_index)
    order = sims.argsort(dim=1, descending=True, stable=True)
    return sims.gather(1, order), idx.gather(1, order)


def _block_top(sims: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top min(k, width) columns of each row of one block, in ``_in_order``'s order.

    topk picks among equal values arbitrarily: where the k-th and (k+1)-th values are
    equal, the row is sorted in full instead (stable: the smaller index wins).
    """
    width = sims.shape[1]
    if width <= k:
        return torch.sort(sims, dim=1, descending=True, stable=True)
    vals, idx = sims.topk(k + 1, dim=1)
    tied = torch.nonzero(vals[:, k - 1] == vals[:, k]).flatten()
    vals, idx = _in_order(vals[:, :k], idx[:, :k])
    if len(tied):
        full_vals, full_idx = torch.sort(sims[tied], dim=1, descending=True, stable=True)
        vals[tied], idx[tied] = full_vals[:, :k], full_idx[:, :k]
    return vals, idx


def _merge(
    best: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor], k: int
) -> tuple[Tensor, Tensor]:
    """The top k of a running answer and a later block's (whose indices are all larger),
    both in ``_in_order``'s order: a stable sort keeps the smaller index first on ties."""
    sims, idx = torch.cat([best[0], new[0]], dim=1), torch.cat([best[1], new[1]], dim=1)
    order = sims.argsort(dim=1, descending=True, stable=True)[:, :k]
    return sims.gather(1, order), idx.gather(1, order)


def _unit_rows(x: Tensor, device: torch.device) -> Tensor:
    x = x.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the features hold non-finite values (inf or nan): no neighbours")
    return F.normalize(x, dim=1)


@torch.no_grad()
def exact_knn(
    queries: Tensor,
    bank: Tensor,
    k: int,
    exclude_self: bool = False,
    *,
    query_block: int | None = None,
    bank_block: int = BANK_BLOCK,
) -> tuple[Tensor, Tensor]:
    """Exact cosine top-k, blocked: (similarities, indices), (N, k) each, on the queries'
    device; at most ``query_block`` x ``bank_block`` similarities at once (default: as
    many query rows as ``BLOCK_ELEMENTS`` allows)."""
    _check(queries, bank, k, exclude_self)
    q, b = _unit_rows(queries, queries.device), _unit_rows(bank, queries.device)
    own = torch.arange(len(q), device=q.device) if exclude_self else None
    return _blocked(q, b, k, own, query_block, bank_block)


def _blocked(
    q: Tensor, b: Tensor, k: int, own: Tensor | None, query_block: int | None, bank_block: int
) -> tuple[Tensor, Tensor]:
    """The exact search on unit rows; ``own[i]``: the bank row query i may not match."""
    n, m = q.shape[0], b.shape[0]
    cols = max(1, min(m, bank_block))
    rows = max(1, min(n, query_block or BLOCK_ELEMENTS // cols))
    out_s = torch.empty(n, k, device=q.device)
    out_i = torch.empty(n, k, dtype=torch.long, device=q.device)
    for r0 in range(0, n, rows):
        qb = q[r0 : r0 + rows]
        none = torch.empty(len(qb), 0, dtype=torch.long, device=q.device)
        best = (qb.new_empty(len(qb), 0), none)
        for c0 in range(0, m, cols):
            sims = qb @ b[c0 : c0 + cols].T
            if own is not None:  # each query's own row, where it lies in this block
                local = own[r0 : r0 + len(qb)] - c0
                hit = torch.nonzero((local >= 0) & (local < sims.shape[1])).flatten()
                sims[hit, local[hit]] = -math.inf
            vals, idx = _block_top(sims, k)
            best = _merge(best, (vals, idx + c0), k)
        out_s[r0 : r0 + len(qb)], out_i[r0 : r0 + len(qb)] = best
    return out_s, out_i


@torch.no_grad()
def knn_similarities(queries: Tensor, bank: Tensor, k: int) -> Tensor:
    """(N, k) the k largest cosine similarities of each query to the bank, descending:
    ``exact_knn``'s values without its indices (no tie rule needed, no host
    synchronisation: the per-batch search of a training step). Non-finite features give
    non-finite values, as a plain matrix product would."""
    _check(queries, bank, k, False)
    q = F.normalize(queries.float(), dim=1)
    b = F.normalize(bank.to(q.device).float(), dim=1)
    cols = max(1, min(b.shape[0], BANK_BLOCK))
    rows = max(1, BLOCK_ELEMENTS // cols)
    out = []
    for r0 in range(0, q.shape[0], rows):
        best = q.new_empty(min(rows, q.shape[0] - r0), 0)
        for c0 in range(0, b.shape[0], cols):
            sims = q[r0 : r0 + rows] @ b[c0 : c0 + cols].T
            best = torch.cat([best, sims], dim=1)
            best = best.topk(min(k, best.shape[1]), dim=1).values
        out.append(best)
    return torch.cat(out) if out else q.new_empty(0, k)


def inverted_lists(m: int) -> int:
    """Inverted lists of the approximate index: about 4 sqrt(M), at least 39 rows each
    (faiss's k-means warns below that)."""
    return max(1, min(int(4 * math.sqrt(m)), m // 39))


def probed_lists(lists: int) -> int:
    """Lists searched per query: 1/PROBED_FRACTION of them, at least MIN_PROBES."""
    return min(lists, max(MIN_PROBES, lists // PROBED_FRACTION))


@torch.no_grad()
def approximate_knn(
    queries: Tensor, bank: Tensor, k: int, exclude_self: bool = False, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Approximate cosine top-k with faiss (IVF-Flat on unit rows, inner product): the
    same (similarities, indices) as ``exact_knn``, on the CPU. Queries whose probed lists
    hold fewer than k rows are searched exactly."""
    import faiss  # the optional ``ann`` extra: only this function needs it

    _check(queries, bank, k, exclude_self)
    cpu = torch.device("cpu")
    q = _unit_rows(queries, cpu).numpy()
    b = _unit_rows(bank, cpu).numpy()
    m, dim = b.shape
    lists = inverted_lists(m)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).permutation(m)[: lists * 64]
    index.cp.seed = seed
    index.train(b[np.sort(sample)])
    index.add(b)
    index.nprobe = probed_lists(lists)
    wanted = k + int(exclude_self)
    sims, idx = (torch.from_numpy(a) for a in index.search(q, wanted))
    if exclude_self:  # drop each row's own index, else its last neighbour
        own = idx == torch.arange(len(idx)).unsqueeze(1)
        own[~own.any(dim=1), -1] = True
        keep = ~own
        sims, idx = sims[keep].view(-1, k), idx[keep].view(-1, k)
    short = torch.nonzero((idx < 0).any(dim=1)).flatten()
    if len(short):  # too few rows in the probed lists: those queries searched exactly
        own = short if exclude_self else None
        fix = _blocked(
            torch.from_numpy(q[short.numpy()]), torch.from_numpy(b), k, own, None, BANK_BLOCK
        )
        sims[short], idx[short] = fix
    return sims.float(), idx.long()


def find_neighbours(
    queries: Tensor,
    bank: Tensor,
    k: int,
    exclude_self: bool = False,
    approximate_above: int | None = None,
) -> Neighbours:
    """``knn`` with a note of the search that ran: approximate (faiss) when
    ``approximate_above`` is given, the bank is larger and faiss is installed, else exact."""
    m = bank.shape[0]
    wanted = approximate_above is not None and m > approximate_above
    if wanted and faiss_available():
        sims, idx = approximate_knn(queries, bank, k, exclude_self)
        lists = inverted_lists(m)
        note = (
            f"neighbours: approximate search (faiss IVF-Flat, {probed_lists(lists)} of "
            f"{lists} lists probed) over {m:,} images, above {approximate_above:,}: k-NN "
            "scores and local density may miss a few true neighbours"
        )
        return Neighbours(sims, idx, note, approximate=True)
    sims, idx = exact_knn(queries, bank, k, exclude_self)
    note = f"neighbours: exact search over {m:,} images"
    if wanted:
        note += (
            f" (above {approximate_above:,} the search is approximate when faiss-cpu is "
            "installed: pip install 'fassl[ann]')"
        )
    return Neighbours(sims, idx, note)


def knn(
    queries: Tensor,
    bank: Tensor,
    k: int,
    exclude_self: bool = False,
    approximate_above: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(similarities, indices), (N, k) each: the k bank rows of largest cosine similarity
    to each query, most similar first (ties: smaller index first in the exact search)."""
    found = find_neighbours(queries, bank, k, exclude_self, approximate_above)
    return found.similarities, found.indices
