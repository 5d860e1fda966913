"""The FASSL pipeline end to end on a tiny dataset: stage outputs, resume, frozen P."""

import pytest
import torch

from fassl.names import EXPORT, LAST
from fassl.runs.pipeline import run_pipeline
from fassl.runtime import Runtime
from fassl.train.checkpoint import load_checkpoint
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

# The training loop end to end: `make test` runs these again on the AVX2 kernels (Makefile).
pytestmark = pytest.mark.trains

CPU = Runtime.cpu()
STAGES = (
    "pipeline.teacher.epochs=2",
    "pipeline.teacher.batch_size=8",
    "pipeline.prototypes.epochs=1",
    "pipeline.prototypes.batch_size=8",
    "pipeline.rebalance.epochs=3",
    "pipeline.rebalance.batch_size=8",
    "probe.fast_epochs=3",
    "probe.knn_k=5",
)


def pipeline(out, *overrides):
    cfg = tiny_config(out, *STAGES, *overrides)
    return run_pipeline(cfg, CPU, data=tiny_data())


def test_pipeline_writes_every_stage_and_report(tmp_path):
    results = pipeline(tmp_path)
    for stage in ("teacher", "prototypes", "rebalance"):
        assert (tmp_path / stage / EXPORT).is_file()
    for name in (
        "results.json",
        "report.md",
        "analysis_prototypes.md",
        "analysis_rebalance.json",
        "retrieval_prototypes.png",
    ):
        assert (tmp_path / name).is_file(), name
    assert {"standard", "few_shot", "knn"} <= set(results)
    assert results["method"] == "fassl_rebalance"
    # every export records the training images' normalisation for the per-image tools
    _, meta = load_checkpoint(tmp_path / "rebalance" / EXPORT)
    data = tiny_data()
    assert meta["data_mean"] == list(data.mean) and meta["data_std"] == list(data.std)


def test_prototypes_unchanged_through_stage2(tmp_path):
    pipeline(tmp_path)
    p1, _ = load_checkpoint(tmp_path / "prototypes" / EXPORT)
    p2, _ = load_checkpoint(tmp_path / "rebalance" / EXPORT)
    assert p1["prototypes"].numpy().tobytes() == p2["prototypes"].numpy().tobytes()
    # ... while the encoder did move.
    key = "backbone.stem.0.weight"
    assert not torch.equal(p1[key], p2[key])


def test_pipeline_resumes_within_and_between_stages(tmp_path, monkeypatch):
    every_epoch = "train.checkpoint_every_s=0"
    pipeline(tmp_path / "full", every_epoch)

    original = Trainer.save

    def die_in_stage2(self, epoch):
        original(self, epoch)
        if self.stage == "rebalance" and epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save", die_in_stage2)
    with pytest.raises(KeyboardInterrupt):
        pipeline(tmp_path / "killed", every_epoch)
    monkeypatch.setattr(Trainer, "save", original)
    killed = tmp_path / "killed"
    assert (killed / "prototypes" / EXPORT).is_file()
    assert not (killed / "rebalance" / EXPORT).is_file()
    assert (killed / "rebalance" / LAST).is_file()
    teacher_time = (killed / "teacher" / EXPORT).stat().st_mtime_ns

    pipeline(killed, every_epoch)  # the same command again
    assert (killed / "teacher" / EXPORT).stat().st_mtime_ns == teacher_time  # not retrained
    a, _ = load_checkpoint(tmp_path / "full" / "rebalance" / EXPORT)
    b, _ = load_checkpoint(killed / "rebalance" / EXPORT)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_skip_stages_with_given_checkpoints(tmp_path):
    pipeline(tmp_path / "a")
    teacher = tmp_path / "a" / "teacher" / EXPORT
    pipeline(tmp_path / "b", f"pipeline.teacher_checkpoint={teacher}")
    assert not (tmp_path / "b" / "teacher").exists()
    assert (tmp_path / "b" / "rebalance" / EXPORT).is_file()


@pytest.mark.parametrize("weight", ["none", "paper", "cluster_size", "softmax_density"])
def test_every_weight_runs_stage2(tmp_path, weight):
    results = pipeline(tmp_path, f"rebalance.weight={weight}", "pipeline.rebalance.epochs=1")
    assert 0 <= results["standard"]["all"] <= 100
