"""fassl from Python: train any method on your own images, embed them, probe them.

Everything the command line does is here for a script, on plain tensors or a torch
``Dataset`` instead of a folder. Every function takes the same configuration as the
command line (a recipe name or path and ``key=value`` overrides, or a ``Config``), so a
script and a command train the same thing:

    import torch, fassl
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8)
    data = fassl.tensor_data(images)                       # unlabeled
    method = fassl.fit("simclr", data, "model.width=16", "optim.epochs=5")
    features = fassl.embed(method.backbone, images, data)   # (512, 128)

``docs/api.md`` lists every piece with an example.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from fassl.config import Config, load_config
from fassl.data import protocol
from fassl.data.bundle import LongTailData, channel_stats
from fassl.data.decode import ImageSet, image_pixels
from fassl.errors import ConfigError, DataError
from fassl.eval.evaluate import evaluate
from fassl.features import embed_images
from fassl.methods import METHODS, Method, build_method
from fassl.pipeline import run_pipeline
from fassl.recipes import resolve_recipe
from fassl.runtime import Runtime, runtime_for
from fassl.train.loop import Trainer

TEST_FRACTION = 0.2  # of a labeled tensor set without a test split, held out per class


def make_config(recipe: str | Path | None = None, *overrides: str, **keys: Any) -> Config:
    """A run's configuration: the defaults, a recipe (a packaged name such as ``demo`` or
    a path), ``"key=value"`` overrides, then keyword keys with ``__`` for the dots
    (``model__width=16``). Unknown keys and values out of range are ConfigErrors."""
    extra = [f"{k.replace('__', '.')}={_yaml(v)}" for k, v in keys.items()]
    path = resolve_recipe(str(recipe)) if recipe is not None else None
    return load_config(path, [*overrides, *extra])


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    return str(value)


def _as_uint8(image: Any, size: int | None) -> np.ndarray:
    """One image as uint8 (3, H, W): a PIL image, a (3, H, W) or (H, W, 3) uint8 array or
    tensor, or a float one in [0, 1]; resized and centre-cropped to ``size`` if given."""
    if isinstance(image, Image.Image):
        return image_pixels(image, size or min(image.size))
    arr = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[0] not in (1, 3) and arr.shape[-1] in (1, 3):
        arr = arr.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise DataError(f"an image must be (3, H, W), (H, W, 3) or (H, W), got {arr.shape}")
    arr = np.repeat(arr, 3, axis=0) if arr.shape[0] == 1 else arr
    if size is not None and arr.shape[1:] != (size, size):
        return image_pixels(Image.fromarray(arr.transpose(1, 2, 0)), size)
    return np.ascontiguousarray(arr)


def tensor_data(
    images: torch.Tensor | np.ndarray | Sequence[Any],
    labels: torch.Tensor | Sequence[int] | None = None,
    *,
    classes: Sequence[str] | None = None,
    test: tuple[Any, Any] | None = None,
    cfg: Config | None = None,
    image_size: int | None = None,
    name: str = "tensors",
) -> LongTailData:
    """Your own images as the data every method trains on.

    ``images``: uint8 (N, 3, H, W) (or any sequence of PIL images / arrays, resized to
    ``image_size``). Without ``labels`` every image is pre-training data and the probes
    are skipped. With labels, the images are used as found (already long-tailed:
    ``data.longtail=none`` unless ``cfg`` says otherwise): ``test`` (images, labels) is the
    test split, else 20 % of each class is held out; validation and the few-shot subset
    follow the protocol of ``cfg.data`` (docs/method.md).
    """
    cfg = cfg or make_config(None, "data.longtail=none")
    pixels = _stack(images, image_size)
    size = pixels.shape[-1]
    data_cfg = _with_size(cfg, size)
    if labels is None:
        return protocol.unlabeled(
            data_cfg, ImageSet(pixels, -np.ones(len(pixels), np.int64), []), name
        )
    y = np.asarray(torch.as_tensor(labels).numpy(), dtype=np.int64)
    if y.shape != (len(pixels),):
        raise DataError(f"labels must have one entry per image, got {y.shape} for {len(pixels)}")
    names = list(classes) if classes is not None else [str(c) for c in range(int(y.max()) + 1)]
    train = ImageSet(pixels, y, names)
    if test is not None:
        test_set = ImageSet(_stack(test[0], size), np.asarray(test[1], dtype=np.int64), names)
    else:
        train, test_set = protocol.carve_test(train, TEST_FRACTION, cfg.seed)
    return protocol.draw(data_cfg, train, test_set, name, cfg.seed)


def dataset_data(
    dataset: torch.utils.data.Dataset,
    *,
    image_size: int | None = None,
    cfg: Config | None = None,
    name: str = "dataset",
) -> LongTailData:
    """A torch ``Dataset`` of images, or of (image, label) pairs, as ``tensor_data``."""
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    if not items:
        raise DataError(f"{name}: the dataset is empty")
    pairs = isinstance(items[0], tuple | list) and len(items[0]) == 2
    images = [item[0] if pairs else item for item in items]
    labels = [int(item[1]) for item in items] if pairs else None
    return tensor_data(images, labels, cfg=cfg, image_size=image_size, name=name)


def _stack(images: Any, size: int | None) -> np.ndarray:
    """uint8 (N, 3, S, S) from a batch tensor or array (as it is when it has the size)
    or from a sequence of images of any kind (``_as_uint8`` each)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    batch = (
        isinstance(images, torch.Tensor)
        and images.ndim == 4
        and images.dtype == torch.uint8
        and images.shape[1] == 3
    )
    if batch and (size is None or tuple(images.shape[2:]) == (size, size)):
        return np.ascontiguousarray(images.numpy())
    listed = [_as_uint8(img, size) for img in images]
    if not listed:
        raise DataError("no images given")
    shapes = {img.shape for img in listed}
    if len(shapes) > 1:
        raise DataError(f"images of different sizes {sorted(shapes)[:3]}: give image_size")
    return np.stack(listed)


def _with_size(cfg: Config, size: int) -> Any:
    data = cfg.data
    data.image_size = size
    return data


def fit(
    method: str,
    data: LongTailData,
    *overrides: str,
    cfg: Config | None = None,
    out_dir: str | Path | None = None,
    init: dict[str, torch.Tensor] | None = None,
) -> Method:
    """Train one method (a name of ``fassl.methods.METHODS``) on ``data`` with the one
    training loop; returns the trained method (``.backbone`` is what the probes read,
    ``.export_state()`` what later stages load). ``overrides`` are ``key=value`` keys
    (``optim.epochs=5``); ``out_dir`` keeps checkpoints and logs (a killed call resumes
    from it), by default a temporary folder. ``init`` starts from an exported state."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: one of {list(METHODS)}")
    cfg = cfg or make_config(None, f"method={method}", *overrides)
    run_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="fassl-"))
    torch.manual_seed(cfg.seed)
    model = build_method(cfg, method, init)
    Trainer(model, data, cfg, cfg.optim, run_dir, runtime_for(cfg.train), method).fit()
    return model


def fit_pipeline(
    data: LongTailData,
    *overrides: str,
    cfg: Config | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """FASSL end to end on ``data`` (teacher, prototypes, student, probes) into
    ``out_dir``, as ``fassl pipeline`` does; returns results.json's content."""
    cfg = cfg or make_config(None, *overrides)
    cfg.out_dir = str(out_dir or tempfile.mkdtemp(prefix="fassl-pipeline-"))
    return run_pipeline(cfg, data=data, rt=runtime_for(cfg.train))


def embed(
    net: nn.Module,
    images: torch.Tensor,
    data: LongTailData | None = None,
    *,
    batch_size: int = 512,
    runtime: Runtime | None = None,
) -> torch.Tensor:
    """float32 (N, D) features of uint8 (N, 3, H, W) ``images`` through ``net`` (a
    backbone, in eval mode), normalised with ``data``'s statistics (else their own)."""
    mean, std = (data.mean, data.std) if data is not None else channel_stats(images)
    rt = runtime or Runtime.cpu()
    return embed_images(net, images, mean, std, rt, batch_size, progress=False)


def probe(net: nn.Module, data: LongTailData, *overrides: str, cfg: Config | None = None) -> dict:
    """The linear probes (standard and few-shot) and kNN of a backbone on labeled
    ``data``: results.json's content (All / Frequent / Medium / Rare / Std per probe)."""
    cfg = cfg or make_config(None, *overrides)
    rt = runtime_for(cfg.train)
    return evaluate(net.to(rt.device), data, cfg.probe, rt, cfg.seed)
