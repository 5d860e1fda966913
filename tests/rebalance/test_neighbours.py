"""fassl.neighbours: the blocked exact search against a sort of the full matrix, by hand
and on ties; the approximate search's recall against the exact one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fassl import neighbours
from fassl.neighbours import approximate_knn, exact_knn, faiss_available, find_neighbours, knn

SQRT2 = math.sqrt(2.0)


def brute_force(queries: torch.Tensor, bank: torch.Tensor, k: int, exclude_self: bool):
    """The whole N x M cosine matrix, sorted per row (stable: smaller index first)."""
    sims = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    if exclude_self:
        sims.fill_diagonal_(-math.inf)
    vals, idx = torch.sort(sims, dim=1, descending=True, stable=True)
    return vals[:, :k], idx[:, :k]


def quarter_signs(n: int, dim: int, seed: int) -> torch.Tensor:
    """Rows of +-1/4 in 16 dimensions: unit length exactly and every cosine a multiple of
    1/16, so any summation order gives the same similarities, and many of them tie."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (n, dim), generator=g).float() * 2 - 1) / 4


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    return centres[torch.randint(0, clusters, (n,), generator=g)] + spread * torch.randn(
        n, dim, generator=g
    )


def test_neighbours_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-3.0, 0.0]])
    # row 0: cosines to rows 1..3 are 0, 1/sqrt2, -1; row 3: 0, -1/sqrt2 and -1 (row 0)
    sims, idx = knn(bank, bank, 2, exclude_self=True)
    assert idx.tolist() == [[2, 1], [2, 0], [0, 1], [1, 2]]
    expected = [[1 / SQRT2, 0.0], [1 / SQRT2, 0.0], [1 / SQRT2, 1 / SQRT2], [0.0, -1 / SQRT2]]
    torch.testing.assert_close(sims, torch.tensor(expected))
    # without exclusion each row finds itself first, at cosine 1
    sims, idx = knn(bank, bank, 1)
    assert idx.flatten().tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(sims.flatten(), torch.ones(4))
    # other queries: a scaled copy of row 1 and a ties case (rows 0 and 1 at 1/sqrt2)
    sims, idx = knn(torch.tensor([[0.0, 5.0], [1.0, 1.0]]), bank[:2], 2)
    assert idx.tolist() == [[1, 0], [0, 1]]
    torch.testing.assert_close(sims, torch.tensor([[1.0, 0.0], [1 / SQRT2, 1 / SQRT2]]))


def test_a_duplicate_is_a_neighbour_but_the_image_itself_is_not():
    e1, e2 = torch.eye(2)
    sims, idx = knn(torch.stack([e1, e1, e2]), torch.stack([e1, e1, e2]), 1, exclude_self=True)
    assert idx.flatten().tolist() == [1, 0, 0] and sims.flatten().tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("blocks", [(7, 9), (3, 40), (300, 1), (300, 300), (64, 5), (13, 1000)])
def test_blocked_exact_search_equals_the_full_sort_ties_included(exclude_self, blocks):
    feats = quarter_signs(300, 16, seed=0)
    feats[5] = feats[7]  # a duplicate: cosine 1 with another index
    for k in (1, 3, 10, 40):
        got = exact_knn(feats, feats, k, exclude_self, query_block=blocks[0], bank_block=blocks[1])
        want = brute_force(feats, feats, k, exclude_self)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), k
    if exclude_self:
        assert all(i not in row for i, row in enumerate(got[1].tolist()))


def test_blocked_search_of_other_queries_and_the_whole_bank():
    bank, queries = quarter_signs(50, 16, seed=1), quarter_signs(23, 16, seed=2)
    got = exact_knn(queries, bank, 50, query_block=4, bank_block=6)  # k = every row
    want = brute_force(queries, bank, 50, False)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_default_blocks_hold_a_bounded_number_of_similarities(monkeypatch):
    feats = clustered(500, 8, 5, 0.5, seed=3)
    seen: list[tuple[int, int]] = []
    block_top = neighbours._block_top

    def spy(sims: torch.Tensor, k: int):
        seen.append(tuple(sims.shape))
        return block_top(sims, k)

    monkeypatch.setattr(neighbours, "_block_top", spy)
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 2000)
    got = exact_knn(feats, feats, 4, True, bank_block=100)
    assert max(r * c for r, c in seen) <= 2000 and len(seen) == 25 * 5
    want = brute_force(feats, feats, 4, True)
    torch.testing.assert_close(got[0], want[0])


def test_bad_arguments_are_refused():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"k must be in \[1, 4\]"):
        knn(x, x, 5, exclude_self=True)
    with pytest.raises(ValueError, match="exclude_self"):
        knn(x[:2], x, 1, exclude_self=True)
    with pytest.raises(ValueError, match="non-finite"):
        knn(torch.tensor([[math.nan, 1.0, 0.0]]), x, 1)


def test_exact_search_is_used_below_the_threshold_and_said_so():
    feats = clustered(200, 8, 4, 0.3, seed=4)
    found = find_neighbours(feats, feats, 5, True, approximate_above=1000)
    assert not found.approximate and found.note.startswith("neighbours: exact search over 200")
    assert torch.equal(found.indices, exact_knn(feats, feats, 5, True)[1])


def test_without_faiss_the_search_is_exact_and_the_note_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(neighbours, "faiss_available", lambda: False)
    feats = clustered(200, 8, 4, 0.3, seed=4)
    found = find_neighbours(feats, feats, 5, True, approximate_above=100)
    assert not found.approximate and "pip install 'fassl[ann]'" in found.note
    assert torch.equal(found.indices, exact_knn(feats, feats, 5, True)[1])


needs_faiss = pytest.mark.skipif(
    not faiss_available(), reason="faiss-cpu is not installed (pip install 'fassl[ann]')"
)


@needs_faiss
def test_approximate_recall_at_k_against_exact():
    feats = clustered(4000, 32, 20, 1.0, seed=5)
    k = 10
    exact = exact_knn(feats, feats, k, exclude_self=True)[1]
    found = find_neighbours(feats, feats, k, exclude_self=True, approximate_above=1000)
    assert found.approximate and "faiss" in found.note
    hits = sum(
        len(set(a) & set(b)) for a, b in zip(exact.tolist(), found.indices.tolist(), strict=True)
    )
    recall = hits / exact.numel()
    assert recall >= 0.95, recall
    assert not (found.indices == torch.arange(4000).unsqueeze(1)).any()  # never itself
    # the similarities are the cosines of the rows found, most similar first
    unit = F.normalize(feats, dim=1)
    cos = (unit.unsqueeze(1) * unit[found.indices]).sum(-1)
    torch.testing.assert_close(found.similarities, cos, atol=1e-5, rtol=0)
    assert (found.similarities[:, :-1] >= found.similarities[:, 1:] - 1e-6).all()


@needs_faiss
def test_approximate_search_of_a_tiny_bank_falls_back_to_exact_rows():
    # 60 rows: one list of the index holds every row, so every answer is exact
    feats = clustered(60, 8, 3, 0.5, seed=6)
    got = approximate_knn(feats, feats, 5, exclude_self=True)
    want = exact_knn(feats, feats, 5, exclude_self=True)
    assert torch.equal(got[1], want[1])


def test_similarities_only_equal_the_full_sort_in_any_blocks(monkeypatch):
    bank, queries = quarter_signs(90, 16, seed=7), quarter_signs(31, 16, seed=8)
    want = brute_force(queries, bank, 6, False)[0]
    assert torch.equal(neighbours.knn_similarities(queries, bank, 6), want)
    monkeypatch.setattr(neighbours, "BANK_BLOCK", 4)  # blocks narrower than k
    monkeypatch.setattr(neighbours, "BLOCK_ELEMENTS", 40)
    assert torch.equal(neighbours.knn_similarities(queries, bank, 6), want)
