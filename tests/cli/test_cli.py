"""The command line: errors name the key or file and exit with status 2."""

import pytest

from fassl.cli import main
from fassl.methods import build_method
from fassl.train.checkpoint import save_checkpoint


def test_unknown_key_exit_code(capsys):
    assert main(["pretrain", "cifar10_lt_cpu", "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err


def test_unknown_recipe(capsys):
    assert main(["pipeline", "no_such_recipe"]) == 2
    err = capsys.readouterr().err
    assert "no_such_recipe" in err and "cifar10_lt_cpu" in err


def test_missing_data_folder(capsys, tmp_path):
    code = main(
        [
            "pretrain",
            "cifar10_lt_cpu",
            f"data.root={tmp_path / 'nowhere'}",
            f"out_dir={tmp_path / 'out'}",
        ]
    )
    assert code == 2 and "nowhere" in capsys.readouterr().err


def test_eval_of_another_architecture(capsys, tmp_path):
    # an encoder of width 8 declared as width 16 in its header does not load
    from tests.helpers import tiny_config

    cfg = tiny_config(tmp_path, "model.width=8")
    state = build_method(cfg, "simclr").export_state()
    meta = {"method": "simclr", "model": {"arch": "resnet18", "width": 16, "cifar_stem": True}}
    path = tmp_path / "encoder.safetensors"
    save_checkpoint(path, state, meta)
    code = main(["eval", str(path), "--config", "demo", f"out_dir={tmp_path / 'e'}"])
    err = capsys.readouterr().err
    assert code == 2 and "encoder.safetensors" in err and "width 8" in err


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    # only expected errors become a message: anything else propagates with its traceback
    import fassl.runs.pretrain

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(fassl.runs.pretrain, "run_pretrain", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["pretrain", "demo", f"out_dir={tmp_path}"])


def test_os_errors_name_the_path(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["tables", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and str(blocker / "sub") in err and "Traceback" not in err


def test_help_shows_examples_recipes_and_pipeline_keys(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "fassl pipeline cifar10_lt_cpu" in top and "cifar10_lt_gpu" in top
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    text = capsys.readouterr().out
    assert "example:" in text and "demo" in text
    assert "pipeline.teacher_checkpoint" in text and "{teacher,prototypes,rebalance}" in text
    for command in ("pretrain", "eval", "embed", "rare", "export", "tsne", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"fassl {command} " in capsys.readouterr().out
