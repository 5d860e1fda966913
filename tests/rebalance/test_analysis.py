import csv
import math

import pytest
import torch

from fassl.analysis.prototypes import prototype_group_shares
from fassl.compare.tables import bar_chart, markdown_tables, summarize, write_csv
from fassl.config import RebalanceConfig
from fassl.prototypes import nearest_images
from fassl.rebalance.enrichment import all_weight_diagnostics, weight_enrichment

GROUPS = {"frequent": [0], "medium": [1], "rare": [2]}


def test_weight_enrichment_hand_example():
    # 10 images: 6 frequent, 3 medium, 1 rare; the two largest weights are the rare image
    # and one medium image.
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    log_phi = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 5.0, 9.0])
    d = weight_enrichment(log_phi, labels, GROUPS, top_fraction=0.2)
    assert d["base_share"] == pytest.approx({"frequent": 0.6, "medium": 0.3, "rare": 0.1})
    assert d["top_share"] == pytest.approx({"frequent": 0.0, "medium": 0.5, "rare": 0.5})
    assert d["enrichment"]["rare"] == pytest.approx(5.0)
    assert d["mean_log_phi"]["medium"] == pytest.approx((0.6 + 0.7 + 5.0) / 3)


def test_all_diagnostics_cover_every_weight():
    g = torch.Generator().manual_seed(0)
    feats, protos = torch.randn(30, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.arange(30) % 3
    d = all_weight_diagnostics(feats, protos, labels, GROUPS, RebalanceConfig(weight_k=3))
    assert set(d) == {"paper", "paper_normalized", "softmax_density", "cluster_size", "knn"}
    for v in d.values():
        assert sum(v["top_share"].values()) == pytest.approx(1.0)


def test_prototype_nearest_images_and_shares():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    protos = torch.tensor([[0.9, 0.1], [-1.0, 0.2], [0.8, -0.1]])
    assert nearest_images(feats, protos).tolist() == [0, 2, 0]
    shares = prototype_group_shares(feats, protos, torch.tensor([0, 1, 2]), GROUPS)
    assert shares == pytest.approx({"frequent": 2 / 3, "medium": 0.0, "rare": 1 / 3})


def run(method, seed, all_acc):
    row = {"all": all_acc, "rare": 1.0, "medium": 2.0, "frequent": 3.0, "std": 0.5}
    return {"method": method, "seed": seed, "results": {"standard": row}}


def test_summary_mean_and_population_spread(tmp_path):
    runs = [run("a", 0, 50.0), run("a", 1, 54.0), run("b", 0, 60.0)]
    s = summarize(runs)
    mean, spread, n = s["standard"]["a"]["all"]
    assert (mean, spread, n) == (52.0, 2.0, 2)
    assert s["standard"]["b"]["all"] == (60.0, 0.0, 1)
    paper = {"all": 1.0, "frequent": 4.0, "medium": 3.0, "rare": 2.0, "std": math.nan}
    text = markdown_tables(s, {"standard": {"a": paper}})
    assert "52.00 ± 2.00" in text and "| *a (paper)* | | 1.00 | 4.00 | 3.00 | 2.00 | — |" in text
    # one column order everywhere: All, Frequent, Medium, Rare, Std
    assert "| All | Frequent | Medium | Rare | Std |" in text
    assert "| a | 2 | 52.00 ± 2.00 | 3.00 ± 0.00 | 2.00 ± 0.00 | 1.00 ± 0.00 |" in text
    write_csv(s, tmp_path / "t.csv")
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert rows[0]["all_mean"] == "52.0000" and rows[0]["seeds"] == "2"
    bar_chart(s, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_a_group_without_classes_is_absent_from_the_weight_analysis_not_nan():
    from fassl.compare.sweep_tables import prototype_shares
    from fassl.compare.tables import _over_seeds
    from fassl.report.results import analysis_markdown

    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    groups = {"frequent": [0], "medium": [], "rare": [1]}  # two classes: no Medium
    log_phi = torch.tensor([0.0, 0.1, 0.2, 1.0, 2.0, 3.0])
    out = weight_enrichment(log_phi, labels, groups, top_fraction=0.34)
    for entry in out.values():
        assert set(entry) == {"frequent", "rare"}
    assert out["enrichment"]["rare"] == pytest.approx(2.0)  # the top 2 are both rare
    md = analysis_markdown("prototypes", {"paper": out}, {"frequent": 0.5, "rare": 0.5})
    assert "nan" not in md.lower() and "| paper | +0.1 / – / +2 |" in md
    assert _over_seeds([None, None]) == "–" and _over_seeds([0.5, 0.7]) == "0.600 ± 0.100"
    shares = prototype_shares([{"prototype_nearest_image_groups": {"frequent": 1.0, "rare": 0.0}}])
    assert set(shares) == {"frequent", "rare"}
