"""Comparison arms: variants of a method, LDAM-DRW+SSP's source run, the paper's rows."""

from __future__ import annotations

import json

import pytest

from fassl.cli import main
from fassl.compare import run as compare
from fassl.compare.arms import arm_order, baseline_epochs, run_config
from fassl.errors import ConfigError
from fassl.names import EXPORT
from fassl.runtime import Runtime
from tests.helpers import tiny_config, tiny_data

# The training loop end to end: `make test` runs these again on the AVX2 kernels (Makefile).
pytestmark = pytest.mark.trains

TINY = ("probe.fast_epochs=2", "probe.few_shot_epochs=2", "optim.epochs=1")


def test_variants_set_their_keys_and_train_for_the_baselines_epochs(tmp_path) -> None:
    cfg = tiny_config(tmp_path, "compare.methods=[simclr_ts,bcl_i_common,bcl_d]")
    ts = run_config(cfg, "simclr_ts", 0, tmp_path)
    assert ts.method == "simclr" and ts.temperature.schedule == "cosine"
    assert ts.optim.epochs == baseline_epochs(cfg)
    common = run_config(cfg, "bcl_i_common", 1, tmp_path)
    assert common.method == "bcl_i" and common.bcl.ops == "common"
    assert common.out_dir == str(tmp_path / "bcl_i_common" / "seed1")
    assert run_config(cfg, "bcl_d", 0, tmp_path).bcl.ops == "randaugment"
    assert cfg.temperature.schedule == "fixed" and cfg.bcl.ops == "randaugment"  # untouched


def test_ldam_ssp_starts_from_the_same_seeds_self_supervised_run(tmp_path) -> None:
    cfg = tiny_config(
        tmp_path, "compare.methods=[ldam_drw_ssp,supervised]", "ldam.ssp_method=simclr"
    )
    assert arm_order(cfg) == ["simclr", "ldam_drw_ssp", "supervised"]  # the source first
    c = run_config(cfg, "ldam_drw_ssp", 2, tmp_path)
    assert c.method == "ldam_drw"
    assert c.train.init_from == str(tmp_path / "simclr" / "seed2" / EXPORT)
    fassl_first = tiny_config(tmp_path, "compare.methods=[supervised,fassl_phi1,fassl]")
    assert arm_order(fassl_first) == ["fassl", "supervised", "fassl_phi1"]


def test_unknown_arm_is_refused_with_the_list(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"bcl_x.*bcl_i_common"):
        tiny_config(tmp_path, "compare.methods=[bcl_x]")


def test_compare_runs_the_new_arms_end_to_end(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(compare, "build_data", lambda *_: tiny_data(size=8))
    methods = "[simclr,bcl_i,simclr_ts,bcl_d_common,ldam_drw_ssp]"
    cfg = tiny_config(
        tmp_path,
        *TINY,
        f"compare.methods={methods}",
        "compare.seeds=[0]",
        "compare.baseline_epochs=1",
        "ldam.ssp_method=simclr",
    )
    compare.run_comparison(cfg, Runtime.cpu())
    text = (tmp_path / "comparison.md").read_text()
    for arm in ("simclr", "bcl_i", "simclr_ts", "bcl_d_common", "ldam_drw_ssp"):
        assert f"| {arm} | 1 |" in text, arm
    assert (tmp_path / "ldam_drw_ssp" / "seed0" / "results.json").is_file()
    # the paper's rows: LDAM-DRW+SSP on CIFAR-10-LT, BCL-I (CIFAR-100-LT only) in the note
    (tmp_path / "bcl_i_common" / "seed0").mkdir(parents=True)
    (tmp_path / "bcl_i_common" / "seed0" / "results.json").write_text(
        (tmp_path / "bcl_i" / "seed0" / "results.json").read_text()
    )
    capsys.readouterr()
    assert main(["tables", str(tmp_path), "--paper"]) == 0
    printed = capsys.readouterr().out
    assert "*LDAM-DRW+SSP (paper)* | | 77.83 | — | — | — | — |" in printed
    assert "| BCL-I | cifar100 | standard | 52.22 | 55.35 | 53.03 | 48.27 | 2.95 |" in printed
    assert main(["tables", str(tmp_path), "--paper", "cifar100"]) == 0
    printed = capsys.readouterr().out
    assert "*BCL-I (paper)* | | 52.22 |" in printed and "43.43" in printed


def test_each_mechanism_has_its_base():
    from fassl.compare.arms import base_of

    assert base_of("bcl_i") == base_of("bcl_i_common") == base_of("simclr_ts") == "simclr"
    assert base_of("bcl_d") == base_of("sdclr_ts") == "sdclr"
    assert base_of("fassl") == base_of("fassl_paper") == "fassl_phi1"
    assert base_of("ldam_drw_ssp") == "supervised"
    assert base_of("simclr") is base_of("fassl_phi1") is base_of("byol") is None


def test_differences_are_paired_by_seed():
    from fassl.compare.tables import difference_tables

    def row(all_: float, rare: float) -> dict:
        return {"standard": {"all": all_, "frequent": 0.0, "medium": 0.0, "rare": rare, "std": 1.0}}

    runs = [
        {"method": "simclr", "seed": 0, "results": row(50.0, 40.0)},
        {"method": "simclr", "seed": 1, "results": row(52.0, 44.0)},
        {"method": "bcl_i", "seed": 0, "results": row(51.0, 43.0)},
        {"method": "bcl_i", "seed": 1, "results": row(55.0, 45.0)},
        {"method": "bcl_i", "seed": 2, "results": row(99.0, 99.0)},  # no base: left out
    ]
    text = difference_tables(runs, [("bcl_i", "simclr")])
    # All: +1 and +3 -> +2.00 ± 1.00; Rare: +3 and +1 -> +2.00 ± 1.00
    assert (
        "| bcl_i − simclr | 2 | +2.00 ± 1.00 | +0.00 ± 0.00 | +0.00 ± 0.00 | +2.00 ± 1.00 |" in text
    )


def test_paper_structure_starts_from_the_sdclr_arm(tmp_path) -> None:
    """FASSL as the paper composes it: stages 1-2 on the sdclr arm's export, phi = 1 from
    the same stage 1, SDCLR trained on for the same extra epochs at stage 2's settings."""
    cfg = tiny_config(
        tmp_path,
        "compare.methods=[fassl_from_sdclr_phi1,fassl_from_sdclr,sdclr_continued]",
        "pipeline.prototypes.epochs=3",
        "pipeline.rebalance.epochs=4",
        "pipeline.rebalance.lr=0.07",
    )
    order = arm_order(cfg)
    assert (
        order.index("sdclr")
        < order.index("fassl_from_sdclr")
        < order.index("fassl_from_sdclr_phi1")
    )
    assert order.index("sdclr") < order.index("sdclr_continued")
    sdclr_export = str(tmp_path / "sdclr" / "seed1" / EXPORT)
    paper = run_config(cfg, "fassl_from_sdclr", 1, tmp_path)
    assert paper.pipeline.teacher_checkpoint == sdclr_export
    assert paper.rebalance.weight == cfg.rebalance.weight
    assert not paper.pipeline.prototypes_checkpoint
    phi1 = run_config(cfg, "fassl_from_sdclr_phi1", 1, tmp_path)
    assert phi1.rebalance.weight == "none"
    assert phi1.pipeline.prototypes_checkpoint == str(
        tmp_path / "fassl_from_sdclr" / "seed1" / "prototypes" / EXPORT
    )
    more = run_config(cfg, "sdclr_continued", 1, tmp_path)
    assert more.method == "sdclr" and more.train.init_from == sdclr_export
    assert more.optim.epochs == 3 + 4 and more.optim.lr == 0.07
    assert run_config(cfg, "sdclr", 1, tmp_path).optim.epochs == baseline_epochs(cfg)
    # equal compute keeps its own teacher
    plain = run_config(tiny_config(tmp_path, "compare.methods=[fassl]"), "fassl", 0, tmp_path)
    assert not plain.pipeline.teacher_checkpoint


def test_fassl_from_sdclr_gh_starts_from_the_sdclr_gh_arm(tmp_path) -> None:
    """FASSL's stages 1-2 on GH's SDCLR: the sdclr_gh arm trains first, its export is the
    teacher, and the difference table sets FASSL against it."""
    from fassl.compare.arms import bases_of

    cfg = tiny_config(tmp_path, "compare.methods=[fassl_from_sdclr_gh]")
    assert arm_order(cfg) == ["sdclr_gh", "fassl_from_sdclr_gh"]
    c = run_config(cfg, "fassl_from_sdclr_gh", 0, tmp_path)
    assert c.pipeline.teacher_checkpoint == str(tmp_path / "sdclr_gh" / "seed0" / EXPORT)
    assert not c.pipeline.prototypes_checkpoint
    assert bases_of("fassl_from_sdclr_gh") == ["sdclr_gh"]


def test_paper_structure_bases() -> None:
    from fassl.compare.arms import bases_of

    assert bases_of("fassl_from_sdclr") == ["fassl_from_sdclr_phi1", "sdclr_continued"]
    assert bases_of("fassl_from_sdclr_phi1") == ["sdclr_continued"]
    assert bases_of("sdclr_continued") == ["sdclr"]
    assert bases_of("fassl") == ["fassl_phi1"] and bases_of("sdclr") == []


def one_epoch_comparison(tmp_path, methods: str, *overrides: str):
    """A tiny comparison of ``methods`` at seed 0: one epoch for each arm and stage."""
    return tiny_config(
        tmp_path,
        *TINY,
        f"compare.methods={methods}",
        "compare.seeds=[0]",
        "compare.baseline_epochs=1",
        *(
            f"pipeline.{s}.{k}"
            for s in ("teacher", "prototypes", "rebalance")
            for k in ("epochs=1", "batch_size=8", "warmup_epochs=0")
        ),
        *overrides,
    )


def test_compare_runs_the_paper_structure_end_to_end(tmp_path, monkeypatch) -> None:
    """The paper's arms train from the sdclr arm; every FASSL report probes its teacher;
    the tables set FASSL beside SDCLR continued and name each arm's structure."""
    monkeypatch.setattr(compare, "build_data", lambda *_: tiny_data(size=8))
    cfg = one_epoch_comparison(
        tmp_path, "[fassl,fassl_from_sdclr,fassl_from_sdclr_phi1,sdclr_continued]"
    )
    compare.run_comparison(cfg, Runtime.cpu())
    text = (tmp_path / "comparison.md").read_text()
    for arm in ("fassl", "fassl_teacher", "sdclr", "fassl_from_sdclr", "sdclr_continued"):
        assert f"| {arm} | 1 |" in text, arm
    assert "| fassl_from_sdclr − sdclr_continued | 1 |" in text
    assert "| fassl_from_sdclr − fassl_from_sdclr_phi1 | 1 |" in text
    assert "fassl: equal compute" in text and "fassl_from_sdclr: paper's structure" in text
    # the paper's arm started from the sdclr arm's export and reports its probes
    paper = json.loads((tmp_path / "fassl_from_sdclr" / "seed0" / "results.json").read_text())
    sdclr = json.loads((tmp_path / "sdclr" / "seed0" / "results.json").read_text())
    assert paper["teacher"]["standard"] == sdclr["standard"]
    assert not (tmp_path / "fassl_from_sdclr" / "seed0" / "teacher").exists()
    # the equal-compute arm probed the teacher it trained, once
    own = json.loads((tmp_path / "fassl" / "seed0" / "results.json").read_text())
    probed = tmp_path / "fassl" / "seed0" / "teacher" / "results.json"
    assert own["teacher"]["checkpoint"] == json.loads(probed.read_text())["checkpoint"]
    assert "SDCLR teacher" in (tmp_path / "fassl" / "seed0" / "report.md").read_text()


def test_compare_help_lists_every_arm(capsys) -> None:
    from fassl.config import ARM_NAMES

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    printed = capsys.readouterr().out
    for arm in ARM_NAMES:
        if arm in ("fassl_prototypes", "fassl_rebalance"):  # stages, not arms to compare
            continue
        assert arm in printed, arm


def test_compare_runs_fassl_on_the_sdclr_gh_arm(tmp_path, monkeypatch) -> None:
    """FASSL's stages train on the sdclr_gh arm's export (a GH run's encoder is a teacher
    like any other), and the tables set it against that arm."""
    monkeypatch.setattr(compare, "build_data", lambda *_: tiny_data(size=8))
    cfg = one_epoch_comparison(tmp_path, "[fassl_from_sdclr_gh]", "gh.warmup=0")
    compare.run_comparison(cfg, Runtime.cpu())
    text = (tmp_path / "comparison.md").read_text()
    assert "| fassl_from_sdclr_gh − sdclr_gh | 1 |" in text
    paper = json.loads((tmp_path / "fassl_from_sdclr_gh" / "seed0" / "results.json").read_text())
    gh = json.loads((tmp_path / "sdclr_gh" / "seed0" / "results.json").read_text())
    assert paper["teacher"]["standard"] == gh["standard"]
