"""Sweeps: grid validation, what grid points share, the sweep tables and plot."""

import json

import pytest

import fassl.compare.sweep as sweep
from fassl.cli import main
from fassl.errors import ConfigError
from fassl.report.results import COLUMNS
from fassl.runtime import Runtime
from tests.helpers import tiny_config, tiny_data

# The training loop end to end: `make test` runs these again on the AVX2 kernels (Makefile).
pytestmark = pytest.mark.trains

TINY = (
    "pipeline.teacher.epochs=1",
    "pipeline.teacher.batch_size=8",
    "pipeline.prototypes.epochs=1",
    "pipeline.prototypes.batch_size=8",
    "pipeline.rebalance.epochs=1",
    "pipeline.rebalance.batch_size=8",
    "compare.baseline_epochs=1",
    "probe.fast_epochs=1",
    "probe.settings=[standard]",
    "probe.knn_k=5",
)


def plan(tmp_path, grid: str, *overrides: str):
    cfg = tiny_config(tmp_path, f"compare.grid={grid}", *overrides)
    (tmp_path / "config.yaml").write_text(sweep.to_yaml(cfg))
    return sweep.plan(cfg, tmp_path)


def test_grid_keys_and_values_are_checked_by_the_loader(tmp_path):
    with pytest.raises(ConfigError, match=r"compare.grid.*prototypes\.bogus"):
        plan(tmp_path, "{prototypes.bogus: [1, 2]}")
    with pytest.raises(ConfigError, match=r"compare.grid.*num_prototypes"):
        plan(tmp_path, "{prototypes.num_prototypes: [4, many]}")
    with pytest.raises(ConfigError, match=r"data\.imbalance"):  # validate(): rho >= 1
        plan(tmp_path, "{data.imbalance: [0.5]}")
    with pytest.raises(ConfigError, match="cannot be swept"):
        plan(tmp_path, "{compare.seeds: [[0], [1]]}")
    with pytest.raises(ConfigError, match="space after each colon"):
        tiny_config(tmp_path, "compare.grid={prototypes.num_prototypes:[64,96]}")


def test_what_each_sweep_shares(tmp_path):
    methods = "compare.methods=[fassl,supervised,simclr]"
    k = plan(tmp_path, "{prototypes.num_prototypes: [4, 6]}", methods)
    assert [p.label for p in k] == ["prototypes.num_prototypes=4", "prototypes.num_prototypes=6"]
    assert [p.cfg.prototypes.num_prototypes for p in k] == [4, 6]
    assert all(p.teacher_group == "all" and p.prototypes_group is None for p in k)
    assert k[1].run_dirs == {
        "fassl": "grid/prototypes.num_prototypes=6/fassl",
        "supervised": "shared/supervised/all",  # K changes no baseline
        "simclr": "shared/simclr/all",
    }
    tau = plan(tmp_path, "{rebalance.ema: [0.9, 0.99]}")
    assert all(p.teacher_group == "all" and p.prototypes_group == "all" for p in tau)
    rho = plan(tmp_path, "{data.imbalance: [10, 100]}", methods)
    assert all(p.teacher_group is None and p.prototypes_group is None for p in rho)
    assert rho[0].run_dirs["supervised"] == "grid/data.imbalance=10/supervised"
    # the teacher (SDCLR) and stage 1 read the temperature schedule: nothing is shared
    temp = plan(tmp_path, "{temperature.tau_max: [0.5, 1.0]}")
    assert all(p.teacher_group is None and p.prototypes_group is None for p in temp)
    both = plan(tmp_path, "{data.imbalance: [10, 100], prototypes.num_prototypes: [4, 6]}")
    assert len(both) == 4 and both[3].teacher_group == "data.imbalance=100"
    assert both[3].cfg.out_dir == str(
        tmp_path / "grid" / "data.imbalance=100,prototypes.num_prototypes=6"
    )


def test_k_sweep_trains_one_teacher_per_seed_and_writes_tables(tmp_path, monkeypatch):
    trained: list[str] = []
    stage = sweep.run_pipeline_stage

    def counting(cfg, data, rt, name, *args, **kwargs):
        export = stage(cfg, data, rt, name, *args, **kwargs)
        trained.append(f"{name}:{cfg.out_dir}")
        return export

    monkeypatch.setattr("fassl.runs.pipeline.run_pipeline_stage", counting)
    monkeypatch.setattr(sweep, "run_pipeline_stage", counting)
    monkeypatch.setattr(sweep, "build_data", lambda *_: tiny_data(size=8))
    cfg = tiny_config(
        tmp_path,
        *TINY,
        "compare.methods=[fassl,supervised]",
        "compare.seeds=[0,1]",
        "compare.grid={prototypes.num_prototypes: [4, 6]}",
    )
    sweep.run_sweep(cfg, Runtime.cpu())
    teachers = {t for t in trained if t.startswith("teacher:")}
    assert teachers == {f"teacher:{tmp_path}/shared/fassl/all/seed{s}" for s in (0, 1)}
    for k in (4, 6):
        for s in (0, 1):
            run = tmp_path / "grid" / f"prototypes.num_prototypes={k}" / "fassl" / f"seed{s}"
            assert (run / "results.json").is_file() and not (run / "teacher").exists()
            assert (run / "prototypes").is_dir()  # stage 1 differs with K
    assert sorted(p.name for p in (tmp_path / "shared" / "supervised" / "all").iterdir()) == [
        "seed0",
        "seed1",
    ]
    text = (tmp_path / "sweep.md").read_text()
    assert "| prototypes.num_prototypes | method | seeds | All |" in text
    assert "| 6 | fassl | 2 |" in text and "| 4 | supervised (shared) | 2 |" in text
    assert "| 4 | 2 |" in text  # the prototypes' groups at K = 4 over two seeds
    assert (tmp_path / "sweep.png").stat().st_size > 0
    rows = (tmp_path / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("setting,prototypes.num_prototypes,method,shared,seeds,all_mean")
    assert len(rows) == 1 + 2 * 2  # (fassl, supervised) x (K = 4, 6)


def test_a_point_too_small_for_the_batch_fails_before_anything_trains(tmp_path, monkeypatch):
    counts = iter([(24, 12, 6), (3, 2, 1)])  # the second point: 6 images, batch 8

    def data_of_size(*_):
        return tiny_data(next(counts), size=8)

    monkeypatch.setattr(sweep, "build_data", data_of_size)
    monkeypatch.setattr(sweep, "run_point_arm", lambda *_: pytest.fail("a run started"))
    cfg = tiny_config(tmp_path, *TINY, "compare.grid={data.imbalance: [10, 100]}")
    with pytest.raises(ConfigError, match=r"data\.imbalance=100.*teacher\.batch_size"):
        sweep.run_sweep(cfg, Runtime.cpu())


def write_run(folder, all_values):
    for seed, value in enumerate(all_values):
        d = folder / f"seed{seed}"
        d.mkdir(parents=True)
        row = {c: 10.0 for c in COLUMNS} | {"all": value}
        (d / "results.json").write_text(json.dumps({"standard": row}))
        shares = {"frequent": 0.5 + 0.1 * seed, "medium": 0.3, "rare": 0.2 - 0.1 * seed}
        payload = {"prototype_nearest_image_groups": shares}
        (d / "analysis_prototypes.json").write_text(json.dumps(payload))


def test_tables_of_a_rho_sweep_from_finished_runs(tmp_path):
    points = []
    for rho, values in ((10, [60.0, 62.0]), (100, [50.0, 51.0])):
        label = f"data.imbalance={rho}"
        write_run(tmp_path / "grid" / label / "fassl", values)
        runs = {"fassl": f"grid/{label}/fassl"}
        points.append({"label": label, "values": {"data.imbalance": rho}, "runs": runs})
    grid = {"keys": ["data.imbalance"], "points": points}
    (tmp_path / "grid" / "grid.json").write_text(json.dumps(grid))
    assert main(["tables", str(tmp_path)]) == 0
    text = (tmp_path / "sweep.md").read_text()
    # mean ± population std over the two seeds, by hand: (60, 62) -> 61 ± 1
    assert "| 10 | fassl | 2 | 61.00 ± 1.00 | 10.00 ± 0.00 |" in text
    assert "| 100 | fassl | 2 | 50.50 ± 0.50 |" in text
    # prototypes: Frequent (0.5, 0.6) -> 55 ± 5 %, Rare (0.2, 0.1) -> 15 ± 5 %
    assert "| 100 | 2 | 55.00 ± 5.00 | 30.00 ± 0.00 | 15.00 ± 5.00 |" in text
    protos = (tmp_path / "sweep_prototypes.csv").read_text().splitlines()
    assert protos[1] == "10,2,0.5500,0.0500,0.3000,0.0000,0.1500,0.0500"
    assert (tmp_path / "sweep.png").is_file()
