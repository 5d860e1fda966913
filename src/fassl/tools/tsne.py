"""``fassl tsne``: t-SNE maps of chosen classes under one or two encoders (the paper's Fig. 3).

The same images (a seeded sample of each chosen class from one split) go through every
checkpoint, so two maps side by side compare the encoders, not the samples. Each class
is named with its Frequent / Medium / Rare group in the legend. t-SNE maps only that
sample (at most ``--per-class`` images of each chosen class, whatever the split's size);
a streamed split decodes only the sampled images, a chunk at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from sklearn.manifold import TSNE

from fassl.data import GROUPS, LongTailData
from fassl.data.collection import Collection
from fassl.encoders import load_encoder
from fassl.errors import ToolError
from fassl.features import embed_images
from fassl.files import atomic_path
from fassl.report.plotting import pyplot
from fassl.runtime import Runtime

SPLITS = ("test", "pretrain", "pool", "val")


@dataclass
class TsneOptions:
    """What to map: classes (empty: the first class of each group), split, images per
    class, feature; and the seed of both the sample and t-SNE."""

    classes: list[str]
    split: str = "test"
    per_class: int = 200
    feature: str = "backbone"
    seed: int = 0
    progress: bool = True
    batch_size: int = 512


def pick_classes(data: LongTailData, names: list[str]) -> list[int]:
    """Class ids of ``names``; empty: the first class of each group present."""
    if not data.labeled or not data.classes:
        raise ToolError(f"{data.name} has no labels: t-SNE colours images by class")
    if not names:
        return [data.groups[g][0] for g in GROUPS if data.groups.get(g)] or [0]
    unknown = [n for n in names if n not in data.classes]
    if unknown:
        raise ToolError(f"--classes: {unknown} are not classes of {data.name}: {data.classes}")
    return [data.classes.index(n) for n in names]


def sample_collection(data: LongTailData, opts: TsneOptions) -> Collection:
    """Up to ``per_class`` images of each chosen class of ``opts.split``, seeded."""
    if opts.split not in SPLITS:
        raise ToolError(f"--split must be one of {SPLITS}, got {opts.split!r}")
    split = getattr(data, opts.split)
    generator = torch.Generator().manual_seed(opts.seed)
    picked = []
    for c in pick_classes(data, opts.classes):
        idx = torch.nonzero(split.labels == c).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=generator)[: opts.per_class]])
    index = torch.cat(picked).sort().values
    if len(index) < 3:
        raise ToolError(f"t-SNE needs at least 3 images; the {opts.split} split has {len(index)}")
    paths = [f"{opts.split}/{int(i):06d}" for i in index]
    images = split.images
    # a lazily read split (the image store): a view of the sample, read a chunk at a time
    sample = images[index] if isinstance(images, torch.Tensor) else images.take(index)
    return Collection(
        data.name,
        sample,
        paths,
        data.mean,
        data.std,
        split.labels[index],
        list(data.classes),
        dict(data.groups),
    )


def tsne_map(features: torch.Tensor, seed: int) -> torch.Tensor:
    """(N, 2) t-SNE coordinates (perplexity 30, or less for small samples)."""
    perplexity = min(30.0, max(1.0, (len(features) - 1) / 3))
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed)
    return torch.from_numpy(tsne.fit_transform(features.numpy()))


def _label(coll: Collection, c: int) -> str:
    group = coll.group_of(c)
    return f"{coll.classes[c]} ({group.capitalize()})" if group else coll.classes[c]


def plot_maps(maps: list[tuple[str, torch.Tensor]], coll: Collection, path: Path) -> None:
    """One scatter panel per checkpoint, a shared class legend below the panels."""
    plt = pyplot()
    assert coll.labels is not None
    fig, axes = plt.subplots(1, len(maps), figsize=(5 * len(maps), 5.4), squeeze=False)
    classes = coll.labels.unique().tolist()
    for ax, (title, xy) in zip(axes[0], maps, strict=True):
        for c in classes:
            mask = coll.labels == c
            ax.scatter(xy[mask, 0], xy[mask, 1], s=6, label=_label(coll, c))
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(5, len(names)), markerscale=2)
    fig.suptitle(f"t-SNE of {len(coll)} images of {coll.name}", fontsize=10)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * (len(names) // 5), 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def run_tsne(
    checkpoints: list[Path], data: LongTailData, rt: Runtime, opts: TsneOptions, out: Path
) -> Path:
    """t-SNE of the same sample under each checkpoint, side by side, into ``out`` (PNG)."""
    if not 1 <= len(checkpoints) <= 2:
        raise ToolError(f"fassl tsne takes one or two checkpoints, got {len(checkpoints)}")
    coll = sample_collection(data, opts)
    maps = []
    for ckpt in checkpoints:
        loaded = load_encoder(ckpt)
        net = loaded.feature_net(opts.feature)
        feats = embed_images(
            net, coll.images, coll.mean, coll.std, rt, opts.batch_size, opts.progress
        )
        title = f"{loaded.meta.get('method', '?')}: {ckpt.parent.name}/{ckpt.name}"
        maps.append((title, tsne_map(feats, opts.seed)))
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_maps(maps, coll, out)
    return out
