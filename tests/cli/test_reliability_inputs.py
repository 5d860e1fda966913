"""Inputs a run takes at its word: library backbones tried on the images' size before any
data is loaded, path values taken literally, the Python API under threads, a cache inside
the data folder, and links that leave it."""

from __future__ import annotations

import importlib.util
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import fassl
from fassl.api import _own_random_streams
from fassl.cli import main
from fassl.config import load_config
from fassl.data import build_data
from fassl.data.files.cache import CACHE_TAG_TEXT
from fassl.data.files.walk import CACHE_TAG, scan_folder
from fassl.data.sources.folder import load_unlabeled_folder
from fassl.errors import ConfigError, DataError
from fassl.models import build_backbone, check_backbone
from tests.data_fixtures import random_images, save_image

HAS_TIMM = importlib.util.find_spec("timm") is not None
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed")
needs_torchvision = pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed")

VIT = "timm:vit_tiny_patch16_224"
SMALL_VIT = {"depth": 1, "embed_dim": 32, "num_heads": 2}  # still built for 224 px

TINY = (
    "model.width=4",
    "model.proj_hidden=16",
    "model.proj_dim=8",
    "optim.epochs=2",
    "optim.batch_size=8",
    "optim.warmup_epochs=0",
    "train.device=cpu",
    "train.precision=fp32",
    "train.progress=false",
)


def fails(capsys, argv: list[str], *names: str) -> str:
    """``fassl argv`` exits with 2 and one message naming each of ``names``."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    message = err[err.index("fassl: error: ") :]
    assert len(message.strip().splitlines()) == 1, err
    for name in names:
        assert name in message, (name, err)
    return message


# ---- backbones that cannot take the images ------------------------------------------------


@needs_timm
def test_a_vit_left_at_224_px_is_one_config_error_saying_to_set_img_size():
    with pytest.raises(ConfigError) as err:
        check_backbone(VIT, SMALL_VIT, 32)
    text = str(err.value)
    assert "\n" not in text
    assert "'model.arch'" in text and VIT in text and "data.image_size=32" in text
    assert "doesn't match model (224)" in text  # what went wrong, in timm's words
    assert "model.kwargs={depth: 1, embed_dim: 32, num_heads: 2, img_size: 32}" in text
    check_backbone(VIT, {**SMALL_VIT, "img_size": 32}, 32)  # what it says to set works


@needs_timm
def test_the_vit_is_refused_before_the_data_is_loaded(tmp_path, capsys):
    empty = tmp_path / "photos"  # loading it would fail: no image files
    empty.mkdir()
    argv = [
        "pretrain",
        "demo",
        *TINY,
        f"model.arch={VIT}",
        "model.kwargs={depth: 1, embed_dim: 32, num_heads: 2}",
        "data.dataset=folder",
        "data.labeled=false",
        f"data.root={empty}",
        "data.image_size=16",
        f"out_dir={tmp_path / 'run'}",
    ]
    message = fails(capsys, argv, "'model.arch'", "img_size: 16")
    assert "no image files" not in message


@needs_timm
def test_the_api_refuses_a_vit_at_the_size_of_the_data_it_is_given(tmp_path):
    data = fassl.tensor_data(torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8))
    kwargs = "model.kwargs={depth: 1, embed_dim: 32, num_heads: 2, img_size: 32}"
    with pytest.raises(ConfigError, match=r"data.image_size=16 .*img_size: 16"):
        fassl.fit("simclr", data, *TINY, f"model.arch={VIT}", kwargs, out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


@needs_torchvision
def test_googlenet_at_its_defaults_returns_features_in_training():
    net = build_backbone("torchvision:googlenet")
    net.train()
    out = net(torch.rand(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, net.out_dim)
    check_backbone("torchvision:googlenet", {}, 32)


@needs_torchvision
def test_googlenet_asked_for_its_auxiliary_outputs_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"'model.arch'.*GoogLeNetOutputs.*aux_logits"):
        check_backbone("torchvision:googlenet", {"aux_logits": True}, 64)


@pytest.mark.slow
@needs_torchvision
def test_inception_at_32_px_says_which_image_size_it_takes():
    with pytest.raises(ConfigError) as err:
        check_backbone("torchvision:inception_v3", {}, 32)
    text = str(err.value)
    assert "\n" not in text and "'model.arch'" in text
    assert "Kernel size can't be greater than actual input size" in text
    assert "set data.image_size=96" in text
    check_backbone("torchvision:inception_v3", {}, 96)


@needs_timm
def test_the_check_leaves_the_random_streams_and_builds_nothing_real():
    state = torch.get_rng_state()
    check_backbone(VIT, {**SMALL_VIT, "img_size": 16, "drop_rate": 0.5}, 16)
    with pytest.raises(ConfigError):
        check_backbone(VIT, SMALL_VIT, 16)  # the failure is confirmed on two real images
    assert torch.equal(state, torch.get_rng_state())


@needs_timm
def test_a_timm_model_with_a_head_layer_after_pooling_has_that_feature_size():
    # MobileNetV3 pools 288 channels, then a 1x1 conv makes 1024: the head sees 1024
    net = build_backbone("timm:mobilenetv3_small_050")
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, net.out_dim)
    check_backbone("timm:mobilenetv3_small_050", {}, 32)


def test_the_own_resnets_are_not_tried():
    check_backbone("resnet18", {}, 8)


# ---- path values taken literally ----------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("out_dir=/runs/keep #2", "out_dir", "/runs/keep #2"),
        ("data.root=/data/photos #2", "root", "/data/photos #2"),
        ("data.root=/data/photos  ", "root", "/data/photos  "),  # trailing spaces stay
        ("data.cache_dir=/c #1", "cache_dir", "/c #1"),
        ("data.root=/a: b, [c] {d}", "root", "/a: b, [c] {d}"),
        ("data.root=/x/${oops}", "root", "/x/${oops}"),  # no interpolation either
        ("data.root=123", "root", "123"),
        ("data.root=''", "root", ""),  # one pair of quotes: the text inside (scripts)
        ('data.root="/q #3"', "root", "/q #3"),
        ("data.root='it''s'", "root", "it's"),
    ],
)
def test_an_override_of_a_path_key_is_taken_as_written(override, key, value):
    cfg = load_config(None, [override])
    assert getattr(cfg if key == "out_dir" else cfg.data, key) == value


def test_every_kind_of_path_key_is_literal():
    cfg = load_config(
        None,
        [
            "train.init_from=a #1",
            "pipeline.teacher_checkpoint=b #2",
            "data.split_files.pretrain=c #3",
            "data.sdclr_splits=d #4",
        ],
    )
    assert cfg.train.init_from == "a #1" and cfg.pipeline.teacher_checkpoint == "b #2"
    assert cfg.data.split_files.pretrain == "c #3" and cfg.data.sdclr_splits == "d #4"


def test_other_keys_keep_yaml():
    cfg = load_config(None, ["optim.lr=0.25 # a comment", "model.kwargs={a: 1}"])
    assert cfg.optim.lr == 0.25 and cfg.model.kwargs == {"a": 1}


@pytest.mark.parametrize("override", ["data.root=/data/a\nb", "out_dir=runs/x\r", "out_dir=\n"])
def test_a_path_with_a_line_break_is_refused_naming_the_key(override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=f"config key '{key}' must name a path on one line"):
        load_config(None, [override])


def test_yaml_files_keep_yaml_rules_for_paths(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "out_dir: \"/runs/keep #2\"\ndata:\n  root: /data/photos #2\n  cache_dir: '/c #1'\n"
    )
    cfg = load_config(recipe)
    assert cfg.out_dir == "/runs/keep #2" and cfg.data.cache_dir == "/c #1"  # quoted
    assert cfg.data.root == "/data/photos"  # unquoted: " #2" is a YAML comment there
    broken = tmp_path / "b.yaml"
    broken.write_text('data:\n  root: "/data/a\\nb"\n')
    with pytest.raises(ConfigError, match=r"'data\.root' must name a path on one line"):
        load_config(broken)


@pytest.mark.slow
@pytest.mark.trains
def test_a_run_writes_into_the_folder_named_with_its_hash(tmp_path):
    tiny = [*TINY, "optim.epochs=1", "data.image_size=8", "data.max_per_class=20"]
    argv = ["pretrain", "demo", *tiny, "data.val_per_class=2", "probe.fast_epochs=1"]
    assert main([*argv, "probe.knn_k=5", f"out_dir={tmp_path}/keep #2"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep #2"]  # not keep/
    assert (tmp_path / "keep #2" / "config.yaml").is_file()
    assert load_config(tmp_path / "keep #2" / "config.yaml").out_dir == f"{tmp_path}/keep #2"


# ---- the Python API under threads ---------------------------------------------------------


def test_calls_that_seed_the_random_streams_run_one_at_a_time():
    inside, release, entered = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with _own_random_streams(torch.device("cpu")):
            inside.set()
            release.wait(10)

    def second() -> None:
        with _own_random_streams(torch.device("cpu")):
            entered.set()

    a = threading.Thread(target=first)
    a.start()
    assert inside.wait(10)
    b = threading.Thread(target=second)
    b.start()
    assert not entered.wait(0.5)  # waits for the first call
    release.set()
    a.join(10)
    b.join(10)
    assert entered.is_set()


@pytest.mark.slow
@pytest.mark.trains
def test_two_seeded_fits_in_two_threads_each_train_what_they_train_alone(tmp_path):
    images = torch.from_numpy(random_images(64, seed=3, size=16))
    data = fassl.tensor_data(images)

    def weights(seed: int, out: Path) -> torch.Tensor:
        method = fassl.fit("simclr", data, *TINY, f"seed={seed}", out_dir=out)
        return torch.cat([p.detach().flatten() for p in method.backbone.parameters()])

    alone = {seed: weights(seed, tmp_path / f"alone{seed}") for seed in (0, 1)}
    together: dict[int, torch.Tensor] = {}

    def run(seed: int) -> None:
        together[seed] = weights(seed, tmp_path / f"thread{seed}")

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not torch.equal(alone[0], alone[1])  # the seeds train different weights
    for seed in (0, 1):
        assert torch.equal(together[seed], alone[seed]), seed


# ---- the cache as data --------------------------------------------------------------------


def _images(folder: Path, n: int, prefix: str = "img") -> Path:
    for i, pixels in enumerate(random_images(n, seed=n, size=8)):
        save_image(folder / f"{prefix}{i}.png", pixels.transpose(1, 2, 0))
    return folder


def test_a_cache_inside_the_data_folder_is_not_data(tmp_path):
    photos = _images(tmp_path / "photos", 6)
    archive = tmp_path / "more.tar.gz"
    _images(tmp_path / "more", 10)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "more", arcname="more")
    cache_dir = photos / "cache"  # inside the folder a later run embeds
    cfg = load_config(
        None,
        [
            "data.dataset=folder",
            "data.labeled=false",
            f"data.root={archive}",
            f"data.cache_dir={cache_dir}",
            "data.image_size=8",
        ],
    )
    assert len(build_data(cfg.data, 0).pretrain) == 10  # extracted and cached in photos/
    assert (cache_dir / "decoded" / CACHE_TAG).read_bytes() == CACHE_TAG_TEXT
    found = load_unlabeled_folder(photos, 8)
    assert len(found) == 6  # not 16: the extracted archive is the cache's
    (line,) = [n for n in found.report if "cache folder" in n]  # the image store's too
    assert line.startswith("skipped ") and f"(holding a {CACHE_TAG}) in {photos}: " in line
    assert "cache/decoded" in line.partition(": ")[2].split(", ")


def test_only_a_valid_tag_marks_a_cache_and_links_to_one_are_skipped(tmp_path):
    photos = _images(tmp_path / "photos", 2)
    _images(photos / "fake", 3)
    (photos / "fake" / CACHE_TAG).write_text("not the signature\n")
    cache = _images(tmp_path / "cache", 4)
    (cache / CACHE_TAG).write_bytes(CACHE_TAG_TEXT)
    (photos / "tagged").mkdir()
    _images(photos / "tagged", 5)
    (photos / "tagged" / CACHE_TAG).write_bytes(CACHE_TAG_TEXT)
    (photos / "inside").symlink_to(photos / "tagged", target_is_directory=True)
    scan = scan_folder(photos)
    assert sum(f.endswith(".png") for f in scan.files) == 2 + 3
    assert scan.caches == ["inside", "tagged"]
    (cache / CACHE_TAG).unlink()
    assert len(scan_folder(cache).files) == 4  # the folder walked is never skipped itself


# ---- links that leave the folder ----------------------------------------------------------


def test_no_image_files_says_how_many_links_were_skipped_and_why(tmp_path):
    elsewhere = _images(tmp_path / "elsewhere", 3)
    links = tmp_path / "links"
    links.mkdir()
    for i in range(300):
        (links / f"l{i:03d}.png").symlink_to(elsewhere / f"img{i % 3}.png")
    with pytest.raises(DataError) as err:
        load_unlabeled_folder(links, 8)
    text = str(err.value)
    assert "no image files" in text and "\n" not in text
    assert "skipped 300 symbolic links leaving the data folder" in text
    assert "only links whose targets lie inside it are followed" in text


def test_the_load_report_says_which_links_were_skipped(tmp_path):
    elsewhere = _images(tmp_path / "elsewhere", 2)
    photos = _images(tmp_path / "photos", 2)
    (photos / "away.png").symlink_to(elsewhere / "img0.png")
    found = load_unlabeled_folder(photos, 8)
    assert len(found) == 2
    assert np.array_equal(found.labels, [-1, -1])
    notes = "\n".join(found.report)
    assert "skipped 1 symbolic link leaving the data folder (only links" in notes
    assert "away.png" in notes
