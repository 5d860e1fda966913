"""fassl embed / rare / export / tsne and the self-explaining figures, on tiny inputs."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import fassl
from fassl import features
from fassl.analysis import rarity
from fassl.analysis.prototypes import GridLabels, grid_order, retrieval_rows
from fassl.analysis.rarity import local_density, rank_images, rank_order, ranks
from fassl.cli import main
from fassl.compare.tables import bar_figure
from fassl.config import RebalanceConfig, to_yaml
from fassl.data import build_data
from fassl.data.collection import Collection, load_collection
from fassl.encoders import load_encoder
from fassl.errors import DataError, ToolError
from fassl.features import embed_images, extract_features
from fassl.methods import build_method
from fassl.models import build_backbone
from fassl.neighbours import APPROXIMATE_ABOVE, faiss_available
from fassl.rebalance import build_reweighter, reweighters
from fassl.runtime import Runtime
from fassl.tools import embed as embed_tool
from fassl.tools.embed import EmbedOptions, run_embed
from fassl.tools.export import torchvision_state
from fassl.tools.tsne import TsneOptions, run_tsne
from fassl.train.checkpoint import export_encoder
from tests.helpers import tiny_config, tiny_data

CPU = Runtime.cpu()
CPU_ARGS = ["train.device=cpu", "train.precision=fp32", "train.progress=false"]


def write_export(folder: Path, method: str = "simclr", *overrides: str) -> Path:
    """A width-4 encoder (random weights, seed 0) exported as the pipeline does, with its
    run's config.yaml beside it."""
    cfg = tiny_config(folder, *overrides)
    torch.manual_seed(0)
    path = folder / "encoder.safetensors"
    export_encoder(build_method(cfg, method), cfg, path)
    (folder / "config.yaml").write_text(to_yaml(cfg))
    return path


def write_images(folder: Path, images: dict[str, np.ndarray]) -> None:
    """``relative path -> uint8 (16, 16, 3)`` as PNG files."""
    for name, pixels in images.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / name)


def noisy(colour: tuple[int, int, int], seed: int, spread: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-spread, spread + 1, (16, 16, 3))
    return np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)


def folder_data(folder: Path, cache: Path) -> list[str]:
    """Overrides of an unlabeled 16 px folder run with its own decode cache."""
    return [
        f"data.root={folder}",
        "data.dataset=folder",
        "data.labeled=false",
        "data.image_size=16",
        f"data.cache_dir={cache}",
    ]


def cli(*args: object) -> int:
    """``fassl ARGS`` on the CPU in fp32, without progress bars."""
    return main([*map(str, args), *CPU_ARGS])


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- embed


def test_embed_rows_follow_index_and_equal_the_probe_features(tmp_path):
    folder = tmp_path / "photos"
    nested = [("b", 0), ("a", 1), ("a", 2), ("c", 3), ("b", 4), ("a", 5)]
    write_images(folder, {f"{d}/img{i}.png": noisy((200, 30 * i, 90), i) for d, i in nested})
    write_images(folder, {f"img{i}.png": noisy((20, 200, 30 * i), i) for i in range(6)})
    (folder / "broken.png").write_bytes(b"not a png")  # skipped, not a row
    (folder / "notes.txt").write_text("not an image")
    ckpt = write_export(tmp_path / "run")
    out = tmp_path / "emb"
    assert cli("embed", ckpt, folder, "--out", out, "data.image_size=16") == 0
    emb = np.load(out / "embeddings.npy")
    rows = read_csv(out / "index.csv")
    assert emb.shape == (12, 32) and emb.dtype == np.float32  # width 4 -> 8 * 4 dims
    assert [r["row"] for r in rows] == [str(i) for i in range(12)]
    # Row i is the file on line i: decode each listed file and run the probe's extraction.
    pixels = np.stack([np.asarray(Image.open(folder / r["path"])) for r in rows])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    data = build_data(tiny_config(tmp_path, *folder_data(folder, tmp_path / "cache")).data)
    assert torch.equal(data.pretrain.images, images)  # the probe's images, same order
    backbone = load_encoder(ckpt).backbone
    probe = extract_features(backbone, images, data.mean, data.std, CPU)
    np.testing.assert_allclose(emb, probe.numpy(), rtol=1e-5, atol=1e-6)
    assert all(r["label"] == "" for r in rows)  # images outside class folders: no labels
    meta = json.loads((out / "embeddings.json").read_text())
    assert meta["images"] == 12 and meta["feature"] == "backbone"


def test_embed_class_folders_as_labels_in_float16(tmp_path):
    folder = tmp_path / "zoo"
    names = ["cat", "dog", "cat", "emu"]
    write_images(folder, {f"{c}/{i}.png": noisy((40 * i, 90, 200), i) for i, c in enumerate(names)})
    ckpt = write_export(tmp_path / "run")
    out = tmp_path / "emb"
    opts = ["--dtype", "float16", "--feature", "projection", "data.image_size=16"]
    assert cli("embed", ckpt, folder, "--out", out, *opts) == 0
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (4, 8) and emb.dtype == np.float16  # model.proj_dim=8
    rows = read_csv(out / "index.csv")
    assert [(r["path"], r["label"]) for r in rows] == [
        ("cat/0.png", "cat"),
        ("cat/2.png", "cat"),
        ("dog/1.png", "dog"),
        ("emu/3.png", "emu"),
    ]


# --------------------------------------------------------------------------- rare


def test_ranking_functions_on_constructed_features():
    assert rank_order(torch.tensor([0.1, 0.5, 0.5, -1.0])).tolist() == [1, 2, 0, 3]
    assert ranks(torch.tensor([0.1, 0.5, 0.5, -1.0])).tolist() == [3, 1, 2, 4]
    e1, e2 = torch.eye(2)
    # k = 1: the two copies of e1 see each other (cos 1), e2 sees nothing alike (cos 0)
    assert local_density(torch.stack([e1, e1, e2]), 1).tolist() == [1.0, 1.0, 0.0]
    g = torch.Generator().manual_seed(0)
    crowd = torch.tensor([1.0, 0.0, 0.0]) + 0.01 * torch.randn(11, 3, generator=g)
    feats = torch.cat([crowd[:7], torch.tensor([[0.0, 0.0, 1.0]]), crowd[7:]])
    ranking = rank_images(feats, None, ["knn"], RebalanceConfig(weight_k=3))
    assert ranking.order()[0].item() == 7 and ranks(ranking.scores["knn"])[7] == 1


def test_blockwise_scores_equal_the_registry_ones(monkeypatch):
    g = torch.Generator().manual_seed(1)
    feats, protos = torch.randn(40, 6, generator=g), torch.randn(5, 6, generator=g)
    cfg = RebalanceConfig(weight_k=4)
    whole = {}
    for name in ("knn", "cluster_size", "softmax_density", "paper"):
        reweighter = build_reweighter(name, cfg)
        reweighter.fit(protos, feats)
        whole[name] = reweighter.dataset_log_phi()
    monkeypatch.setattr(rarity, "BLOCK_ELEMENTS", 7 * 40)  # blocks of 7 rows
    for name, expected in whole.items():
        torch.testing.assert_close(rarity.weight_scores(name, cfg, feats, protos), expected)


def gradient(seed: int) -> np.ndarray:
    """A colour gradient with +-3 noise: every seed gives a near-identical image."""
    ramp = np.linspace(0, 255, 16)
    img = np.stack([np.tile(ramp, (16, 1)), np.tile(ramp[:, None], (1, 16)), np.full((16, 16), 60)])
    noise = np.random.default_rng(seed).integers(-3, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def outlier_folder(folder: Path) -> None:
    """Eleven near-identical gradients and one black-and-white checkerboard."""
    write_images(folder, {f"same{i:02d}.png": gradient(i) for i in range(11)})
    board = (np.indices((16, 16)).sum(axis=0) % 2 * 255).astype(np.uint8)
    write_images(folder, {"odd.png": np.repeat(board[:, :, None], 3, axis=2)})


@pytest.mark.slow
def test_rare_ranks_the_outlier_first_and_refuses_prototype_weights(tmp_path, capsys):
    folder = tmp_path / "imgs"
    outlier_folder(folder)
    ckpt = write_export(tmp_path / "run")  # SimCLR: no prototypes
    out = tmp_path / "rare"
    base = ["rare", ckpt, folder, "--out", out, "data.image_size=16", "prototypes.feature=backbone"]
    assert cli(*base) == 0
    rows = read_csv(out / "rarity.csv")
    assert len(rows) == 12 and rows[0]["path"] == "odd.png" and rows[0]["rank"] == "1"
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert "nearest_prototype" not in rows[0]
    for name in ("rarity_contact_sheet.png", "rarity_density.png", "rarity.json"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "rarity_groups.md").exists()  # no labels, no group table
    assert cli(*base, "--weights", "paper") == 2  # one message, exit status 2
    message = capsys.readouterr().err
    assert "holds no prototypes" in message and "--weights knn only" in message


def test_rare_with_prototypes_reports_groups_among_the_rarest(tmp_path):
    folder = tmp_path / "zoo"
    counts = {"ant": 6, "bee": 4, "cow": 2}  # frequent / medium / rare by count
    colours = {"ant": (220, 40, 40), "bee": (40, 220, 40), "cow": (40, 40, 220)}
    write_images(
        folder, {f"{c}/{i}.png": noisy(colours[c], i) for c, n in counts.items() for i in range(n)}
    )
    ckpt = write_export(tmp_path / "run", "fassl_prototypes")
    out = tmp_path / "rare"
    opts = ["--weights", "knn,softmax_density", "data.image_size=16"]
    assert cli("rare", ckpt, folder, "--out", out, *opts) == 0
    rows = read_csv(out / "rarity.csv")
    assert {"nearest_prototype", "label", "score_softmax_density"} <= set(rows[0])
    report = json.loads((out / "rarity.json").read_text())
    assert len(report["prototype_occupancy"]) == 6 and sum(report["prototype_occupancy"]) == 12
    # top 1% of 12 images = the rarest one: its group's share is 1, enrichment 12 / group size
    group = {"ant": "frequent", "bee": "medium", "cow": "rare"}[rows[0]["label"]]
    top1 = report["group_enrichment"]["knn"]["top1%"]
    assert top1["top_share"][group] == 1.0
    assert top1["enrichment"][group] == pytest.approx(12 / counts[rows[0]["label"]])
    text = (out / "rarity_groups.md").read_text()
    assert "| knn | top1% |" in text and "| softmax_density | top5% |" in text


# --------------------------------------------------------------------------- export

# torchvision's resnet18 (width 64, ImageNet stem) state dict without fc: convolutions
# by hand; every BatchNorm has weight, bias, running_mean, running_var (C,) and
# num_batches_tracked ().
RESNET18_CONVS = {
    "conv1.weight": (64, 3, 7, 7),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.1.conv1.weight": (64, 64, 3, 3),
    "layer1.1.conv2.weight": (64, 64, 3, 3),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.1.conv1.weight": (128, 128, 3, 3),
    "layer2.1.conv2.weight": (128, 128, 3, 3),
    "layer3.0.conv1.weight": (256, 128, 3, 3),
    "layer3.0.conv2.weight": (256, 256, 3, 3),
    "layer3.0.downsample.0.weight": (256, 128, 1, 1),
    "layer3.1.conv1.weight": (256, 256, 3, 3),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.0.conv1.weight": (512, 256, 3, 3),
    "layer4.0.conv2.weight": (512, 512, 3, 3),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.1.conv1.weight": (512, 512, 3, 3),
    "layer4.1.conv2.weight": (512, 512, 3, 3),
}
RESNET18_BNS = {
    "bn1": 64,
    **{f"layer1.{b}.bn{i}": 64 for b in (0, 1) for i in (1, 2)},
    **{f"layer2.{b}.bn{i}": 128 for b in (0, 1) for i in (1, 2)},
    "layer2.0.downsample.1": 128,
    **{f"layer3.{b}.bn{i}": 256 for b in (0, 1) for i in (1, 2)},
    "layer3.0.downsample.1": 256,
    **{f"layer4.{b}.bn{i}": 512 for b in (0, 1) for i in (1, 2)},
    "layer4.0.downsample.1": 512,
}


def test_export_uses_torchvision_resnet18_names_and_shapes():
    expected = dict(RESNET18_CONVS)
    for bn, c in RESNET18_BNS.items():
        expected |= {f"{bn}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")}
        expected[f"{bn}.num_batches_tracked"] = ()
    assert len(expected) == 120  # torchvision's 122 keys less fc.weight and fc.bias
    state = torchvision_state(build_backbone("resnet18", 64, cifar_stem=False))
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    cifar = torchvision_state(build_backbone("resnet18", 64, cifar_stem=True))
    assert tuple(cifar["conv1.weight"].shape) == (64, 3, 3, 3)  # the CIFAR stem's 3x3


class PlainBlock(nn.Module):
    """torchvision's BasicBlock, written out: conv1/bn1/conv2/bn2 and downsample."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class PlainResNet18(nn.Module):
    """torchvision's ResNet-18 without fc; the CIFAR stem: 3x3 stride-1 conv1, no max-pool."""

    def __init__(self, width: int, cifar_stem: bool) -> None:
        super().__init__()
        k, s, p = (3, 1, 1) if cifar_stem else (7, 2, 3)
        self.conv1 = nn.Conv2d(3, width, k, s, p, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, 2, 1)
        chans = [width, width, 2 * width, 4 * width, 8 * width]
        for i in range(1, 5):
            stride = 1 if i == 1 else 2
            layer = [PlainBlock(chans[i - 1], chans[i], stride), PlainBlock(chans[i], chans[i], 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_export_round_trips_into_plain_pytorch(tmp_path):
    ckpt = write_export(tmp_path / "run")
    out = tmp_path / "export"
    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    plain = PlainResNet18(4, cifar_stem=True)
    plain.load_state_dict(load_file(str(out / "backbone.safetensors")), strict=True)
    ours = load_encoder(ckpt).backbone.eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x)
        torch.testing.assert_close(plain.eval()(x), expected)
        torch.testing.assert_close(torch.jit.load(str(out / "backbone.pt"))(x), expected)
    info = json.loads((out / "backbone.json").read_text())
    assert info["cifar_stem"] is True and info["feature_dim"] == 32


# --------------------------------------------------------------------------- figures


def test_tsne_writes_a_png_for_two_checkpoints(tmp_path):
    a = write_export(tmp_path / "a")
    b = write_export(tmp_path / "b", "byol", "seed=1")
    out = tmp_path / "tsne.png"
    opts = TsneOptions(["c0", "c2"], split="test", per_class=5, progress=False)
    run_tsne([a, b], tiny_data(), CPU, opts, out)
    with Image.open(out) as img:
        assert img.size[0] > img.size[1] > 100  # two panels side by side


def test_retrieval_rows_distinct_and_grouped():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    protos = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.05]])
    rows = retrieval_rows(feats, protos, per_row=8)
    assert rows.shape == (3, 3)  # only 3 images: a row holds each once
    assert all(len(set(r.tolist())) == 3 for r in rows)
    assert rows[0, 0] == 2 and rows[1, 0] == 0
    labels = GridLabels(torch.tensor([0, 0, 1]), ["x", "y"], {"frequent": [0], "rare": [1]})
    order = grid_order(rows, torch.tensor([1, 2, 0]), labels, max_rows=8)
    # frequent rows first (most occupied first), then rare
    assert order == [(1, "frequent"), (2, "frequent"), (0, "rare")]
    assert grid_order(rows, torch.tensor([1, 2, 0]), labels, max_rows=2) == [
        (1, "frequent"),
        (0, "rare"),
    ]


def test_bar_chart_legend_covers_no_axes():
    cols = {c: (50.0, 1.0, 2) for c in ("all", "frequent", "medium", "rare", "std")}
    summary = {"standard": {m: cols for m in ("simclr", "byol", "fassl")}, "few_shot": {}}
    summary["few_shot"] = {"fassl": cols}
    fig = bar_figure(summary)
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["simclr", "byol", "fassl"]
    for ax in fig.axes:
        assert not legend.overlaps(ax.get_window_extent())


# --------------------------------------------------------------------------- pipeline

STAGES = (
    "pipeline.teacher.epochs=1",
    "pipeline.prototypes.epochs=1",
    "pipeline.rebalance.epochs=1",
    *(f"pipeline.{s}.batch_size=8" for s in ("teacher", "prototypes", "rebalance")),
)


@pytest.mark.slow
def test_unlabeled_pipeline_writes_label_free_outputs_and_names_them(tmp_path, capsys):
    folder = tmp_path / "photos"
    write_images(
        folder, {f"day{i % 2}/{i:02d}.png": noisy((30 * i, 120, 90), i) for i in range(16)}
    )
    out = tmp_path / "run"
    cfg = tiny_config(out, *STAGES, *folder_data(folder, tmp_path / "cache"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(to_yaml(cfg))
    assert main(["pipeline", str(recipe)]) == 0
    for stage in ("prototypes", "rebalance"):
        rows = read_csv(out / f"rarity_{stage}" / "rarity.csv")
        assert sorted(r["path"] for r in rows) == sorted(
            f"day{i % 2}/{i:02d}.png" for i in range(16)
        )
        assert (out / f"retrieval_{stage}.png").is_file()
        assert (out / f"rarity_{stage}" / "rarity_density.png").is_file()
    assert not list(out.glob("analysis_*"))  # label-using analyses need labels
    said = capsys.readouterr().out.strip().splitlines()[-1]
    named = said.split(": ", 1)[1].split(", ")
    assert "rarity_prototypes/" in named and "retrieval_rebalance.png" in named
    assert all((out / name).exists() for name in named), named


def test_tools_normalise_like_the_training_images_when_the_export_says_how():
    from fassl.data.collection import Collection
    from fassl.encoders import LoadedEncoder

    coll = Collection(
        "c",
        torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
        ["a", "b"],
        (0.1, 0.2, 0.3),
        (0.4, 0.5, 0.6),
    )

    def loaded(meta):
        return LoadedEncoder(None, None, meta, "e.st")  # type: ignore[arg-type]

    recorded = loaded({"data_mean": [0.5, 0.5, 0.5], "data_std": [0.2, 0.2, 0.2]})
    used = coll.normalised_as(recorded.training_stats, recorded.source)
    assert used.mean == (0.5, 0.5, 0.5) and used.std == (0.2, 0.2, 0.2)
    assert "e.st" in used.notes[-1]
    older = loaded({})  # exports written before they recorded the statistics
    assert coll.normalised_as(older.training_stats, older.source) is coll


# ------------------------------------------------------- collections of any size


class CountingImages:
    """uint8 images behind the lazy interface (``images[a:b]``, ``shape``): records how
    many images each read returns, so a test can see that none reads them all."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images
        self.reads: list[int] = []

    @property
    def shape(self) -> torch.Size:
        return self.images.shape

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> torch.Tensor:
        out = self.images[index]
        self.reads.append(len(out))
        return out


def small_collection(folder: Path) -> Collection:
    outlier_folder(folder)
    return load_collection(str(folder), tiny_config(folder.parent, "data.image_size=16").data, 0)


def test_embed_reads_and_writes_a_chunk_at_a_time(tmp_path, monkeypatch):
    coll = small_collection(tmp_path / "imgs")
    ckpt = write_export(tmp_path / "run")
    whole = run_embed(ckpt, coll, CPU, EmbedOptions(progress=False), tmp_path / "whole")
    monkeypatch.setattr(features, "PROGRESS_CHUNK", 5)
    lazy = CountingImages(coll.images)
    chunked = dataclasses.replace(coll, images=lazy)
    got = run_embed(ckpt, chunked, CPU, EmbedOptions(progress=False), tmp_path / "chunked")
    assert lazy.reads == [5, 5, 2]  # 12 images, never more than a chunk at once
    assert isinstance(got, np.memmap) and got.shape == (12, 32)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(whole))
    assert not list((tmp_path / "chunked").glob(".*tmp-*"))  # no temporary left behind


class PrefetchingImages(CountingImages):
    """A lazy set that decodes ahead (``batches``, as the image store's): the chunks must
    be asked for through it, in order."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__(images)
        self.batched: list[slice] = []

    def batches(self, index_batches, prefetch: int = 2):
        for index in index_batches:
            self.batched.append(index)
            yield self[index]


def test_lazy_images_decoding_ahead_embed_like_decoded_ones(tmp_path, monkeypatch):
    coll = small_collection(tmp_path / "imgs")
    net = load_encoder(write_export(tmp_path / "run")).backbone
    decoded = embed_images(net, coll.images, coll.mean, coll.std, CPU, progress=False)
    lazy = PrefetchingImages(coll.images)
    monkeypatch.setattr(features, "PROGRESS_CHUNK", 5)
    got = embed_images(net, lazy, coll.mean, coll.std, CPU, progress=False)  # type: ignore[arg-type]
    assert lazy.batched == [slice(0, 5), slice(5, 10), slice(10, 15)] and lazy.reads == [5, 5, 2]
    torch.testing.assert_close(got, decoded)


def huge_features(monkeypatch, scale: float) -> None:
    """fassl embed's features multiplied by ``scale`` (an encoder with a huge output)."""
    real = embed_tool.feature_chunks

    def scaled(*args, **kwargs):
        return ((start, f * scale) for start, f in real(*args, **kwargs))

    monkeypatch.setattr(embed_tool, "feature_chunks", scaled)


def test_float16_overflow_is_refused_or_counted(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "imgs"
    outlier_folder(folder)
    ckpt = write_export(tmp_path / "run")
    huge_features(monkeypatch, 1e6)
    out = tmp_path / "emb"
    base = ["embed", ckpt, folder, "--out", out, "--dtype", "float16", "data.image_size=16"]
    assert cli(*base) == 2
    err = capsys.readouterr().err
    assert "float16's largest value 65504" in err and "--dtype float32" in err
    assert (
        "Traceback" not in err
        and len([line for line in err.splitlines() if "float16" in line]) == 1
    )
    assert not out.exists() or not any(out.iterdir())  # refused: nothing written
    assert cli(*base, "--allow-overflow") == 0
    emb = np.load(out / "embeddings.npy")
    meta = json.loads((out / "embeddings.json").read_text())
    assert meta["float16_overflow"] == int(np.isinf(emb).sum()) > 0
    assert "written as inf" in capsys.readouterr().err
    assert cli(*base[:-3], "data.image_size=16") == 0  # float32 keeps them finite
    assert np.isfinite(np.load(out / "embeddings.npy")).all()
    monkeypatch.undo()
    assert cli(*base) == 0  # an ordinary encoder in float16: nothing to count
    assert json.loads((out / "embeddings.json").read_text())["float16_overflow"] == 0


def test_embedding_no_images_names_the_empty_collection(tmp_path):
    ckpt = write_export(tmp_path / "run")
    empty = Collection(
        "holiday", torch.empty(0, 3, 16, 16, dtype=torch.uint8), [], (0.5,) * 3, (0.25,) * 3
    )
    with pytest.raises(ToolError, match="holiday: the collection holds no images"):
        run_embed(ckpt, empty, CPU, EmbedOptions(progress=False), tmp_path / "emb")
    assert not (tmp_path / "emb").exists()
    net = load_encoder(ckpt).backbone
    with pytest.raises(
        DataError, match=r"embed: images holds no images \(shape \(0, 3, 16, 16\)\)"
    ):
        fassl.embed(net, torch.empty(0, 3, 16, 16, dtype=torch.uint8))
    assert embed_images(net, empty.images, empty.mean, empty.std, CPU).shape == (0, 32)


def test_one_neighbour_search_gives_the_knn_scores_and_the_density(monkeypatch):
    calls = []
    real = reweighters.find_neighbours

    def counted(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(reweighters, "find_neighbours", counted)
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(60, 5, generator=g)
    ranking = rank_images(feats, None, ["knn"], RebalanceConfig(weight_k=4))
    assert calls == [4]  # one search, k = 4
    assert torch.equal(ranking.scores["knn"], -ranking.density)
    assert ranking.notes[-1] == "neighbours: exact search over 60 images"
    assert not ranking.approximate
    # the numbers of the knn weight as before: k + 1 neighbours less the self-match
    unit = torch.nn.functional.normalize(feats, dim=1)
    top = (unit @ unit.T).topk(5, dim=1).values
    torch.testing.assert_close(ranking.density, (top.sum(dim=1) - 1.0) / 4)


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed")
@pytest.mark.slow
def test_rare_above_the_threshold_searches_approximately_and_says_so(tmp_path):
    folder = tmp_path / "imgs"
    outlier_folder(folder)
    ckpt = write_export(tmp_path / "run")
    out = tmp_path / "rare"
    base = ["rare", ckpt, folder, "--out", out, "data.image_size=16", "prototypes.feature=backbone"]
    assert cli(*base, "--approximate-above", "5") == 0
    meta = json.loads((out / "rarity.json").read_text())
    assert meta["neighbour_search"] == "approximate (faiss)"
    assert any("faiss" in note and "above 5" in note for note in meta["notes"])
    assert read_csv(out / "rarity.csv")[0]["path"] == "odd.png"
    assert cli(*base) == 0  # 12 images: below the default, exact
    meta = json.loads((out / "rarity.json").read_text())
    assert meta["neighbour_search"] == "exact"
    assert "neighbours: exact search over 12 images" in meta["notes"]


def test_rare_help_states_the_default_threshold(capsys):
    with pytest.raises(SystemExit):
        main(["rare", "--help"])
    assert f"default {APPROXIMATE_ABOVE}" in " ".join(capsys.readouterr().out.split())
