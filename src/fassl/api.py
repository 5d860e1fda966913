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

import contextlib
import copy
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from fassl.config import Config, load_config, validate
from fassl.data import LongTailData, channel_stats
from fassl.data.files.decode import ImageSet, image_pixels
from fassl.data.splits import protocol
from fassl.errors import ConfigError, DataError
from fassl.eval.evaluate import evaluate
from fassl.features import embed_images
from fassl.methods import METHODS, Method, build_method
from fassl.models import check_backbone
from fassl.processes import run_lock
from fassl.recipes import resolve_recipe
from fassl.registry import CUSTOM
from fassl.runs.pipeline import run_pipeline
from fassl.runs.settings import check_stage, record_settings
from fassl.runs.stage import check_batch_size
from fassl.runtime import Runtime, runtime_for
from fassl.train.loop import Trainer

TEST_FRACTION = 0.2  # of a labeled tensor set without a test split, held out per class

# The global torch random streams are process state: two seeded calls in two threads
# would draw from one stream and each train other weights than alone. Calls that seed
# them (fit, fit_pipeline, probe) therefore run one at a time; re-entrant for a call
# made from inside another.
_RANDOM_STREAMS = threading.RLock()


def make_config(recipe: str | Path | None = None, *overrides: str, **keys: Any) -> Config:
    """A run's configuration: the defaults, a recipe (a packaged name such as ``demo`` or
    a path), ``"key=value"`` overrides, then keyword keys with ``__`` for the dots
    (``model__width=16``; a key given as None is left at its default). Unknown keys and
    values out of range are ConfigErrors."""
    extra = [f"{k.replace('__', '.')}={_yaml(v)}" for k, v in keys.items() if v is not None]
    path = resolve_recipe(str(recipe)) if recipe is not None else None
    return load_config(path, [*overrides, *extra])


def _yaml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    return str(value)


def _pixels(arr: np.ndarray, what: str) -> np.ndarray:
    """uint8 pixels of a numeric array, by one convention for every entry point: uint8
    as it is, other integers in 0..255, floats in [0, 1] (scaled by 255). Anything else
    is a DataError, never a silent rescale (float images in 0..255 would clip to white)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{what}: pixels must be uint8 0..255 or float 0..1, got {arr.dtype}")
    if arr.size == 0:
        return arr.astype(np.uint8)
    lo, hi = float(arr.min()), float(arr.max())
    if np.issubdtype(arr.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise DataError(f"{what}: integer pixels must be in 0..255, got {lo:g}..{hi:g}")
        return arr.astype(np.uint8)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(f"{what}: float pixels must be finite, found NaN or infinity")
    if lo < 0 or hi > 1:
        raise DataError(
            f"{what}: float pixels must be in [0, 1], got {lo:g}..{hi:g} (for 0..255 values "
            "give uint8, or divide by 255)"
        )
    return np.rint(arr.astype(np.float64) * 255).astype(np.uint8)


def _as_uint8(image: Any, size: int | None) -> np.ndarray:
    """One image as uint8 (3, H, W): a PIL image, a (3, H, W), (H, W, 3) or (H, W) array or
    tensor (``_pixels``' convention); resized and centre-cropped to ``size`` if given."""
    if isinstance(image, Image.Image):
        return image_pixels(image, size or min(image.size))
    if not isinstance(image, torch.Tensor | np.ndarray):
        raise DataError(
            f"an image must be a PIL image, a numpy array or a tensor, got {type(image).__name__}"
        )
    arr = _pixels(image.numpy() if isinstance(image, torch.Tensor) else image, "image")
    if arr.ndim == 3 and arr.shape[0] not in (1, 3) and arr.shape[-1] in (1, 3):
        arr = arr.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3) or 0 in arr.shape:
        raise DataError(f"an image must be (3, H, W), (H, W, 3) or (H, W), got {arr.shape}")
    arr = np.repeat(arr, 3, axis=0) if arr.shape[0] == 1 else arr
    if size is not None and arr.shape[1:] != (size, size):
        return image_pixels(Image.fromarray(arr.transpose(1, 2, 0)), size)
    return np.ascontiguousarray(arr)


def _labels(labels: Any, n: int, what: str) -> np.ndarray:
    """int64 (n,) class ids >= 0: integers, or floats with integer values (never
    truncated); one entry per image."""
    arr = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.shape != (n,):
        raise DataError(f"{what} must have one entry per image, got {arr.shape} for {n}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{what} must be integer class ids, got {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(
        np.isfinite(arr) & (arr == np.rint(arr))
    ):
        raise DataError(f"{what} must be integer class ids, got non-integer values")
    out = arr.astype(np.int64)
    if n and out.min() < 0:
        hint = " (for unlabeled images, give labels=None)" if (out == -1).all() else ""
        raise DataError(f"{what} must be class ids >= 0, got {int(out.min())}{hint}")
    return out


def _check_size(image_size: int | None) -> None:
    if image_size is not None and not (isinstance(image_size, int) and 8 <= image_size <= 4096):
        raise DataError(f"image_size must be an integer in [8, 4096], got {image_size!r}")


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
    cfg = copy.deepcopy(cfg) if cfg is not None else make_config(None, "data.longtail=none")
    _check_size(image_size)
    pixels = _stack(images, image_size)
    size = pixels.shape[-1]
    data_cfg = cfg.data  # a copy: the caller's config is left as it was
    data_cfg.image_size = size
    if labels is None:
        return protocol.unlabeled(
            data_cfg, ImageSet(pixels, -np.ones(len(pixels), np.int64), []), name
        )
    y = _labels(labels, len(pixels), "labels")
    names = _class_names(classes, y)
    train = ImageSet(pixels, y, names)
    if test is not None:
        test_pixels = _stack(test[0], size)
        test_y = _labels(test[1], len(test_pixels), "test labels")
        if test_y.max(initial=-1) >= len(names):
            raise DataError(
                f"test labels go up to {int(test_y.max())}, but there are {len(names)} classes"
            )
        test_set = ImageSet(test_pixels, test_y, names)
    else:
        train, test_set = protocol.carve_test(train, TEST_FRACTION, cfg.seed)
    return protocol.draw(data_cfg, train, test_set, name, cfg.seed)


def _class_names(classes: Sequence[str] | None, labels: np.ndarray) -> list[str]:
    """``classes``, which must name every label; else the label ids as names."""
    top = int(labels.max(initial=-1))
    if classes is None:
        return [str(c) for c in range(top + 1)]
    names = [str(c) for c in classes]
    if top >= len(names):
        raise DataError(f"labels go up to {top}, but classes names only {len(names)}")
    return names


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
    """uint8 (N, 3, S, S) from a batch tensor or array (``_pixels``' convention; as it is
    when it has the size) or from a sequence of images of any kind (``_as_uint8`` each)."""
    if images is None:
        raise DataError("no images given (None)")
    if isinstance(images, torch.Tensor | np.ndarray) and images.ndim == 4:
        arr = _pixels(images.numpy() if isinstance(images, torch.Tensor) else images, "images")
        if len(arr) == 0:
            raise DataError("no images given: the batch is empty")
        if (
            arr.shape[1] == 3
            and 0 not in arr.shape
            and (size is None or arr.shape[2:] == (size, size))
        ):
            return np.ascontiguousarray(arr)
        images = list(arr)
    listed = [_as_uint8(img, size) for img in images]
    if not listed:
        raise DataError("no images given")
    shapes = {img.shape for img in listed}
    if len(shapes) > 1:
        raise DataError(f"images of different sizes {sorted(shapes)[:3]}: give image_size")
    return np.stack(listed)


def _check_data(data: Any, what: str) -> LongTailData:
    if not isinstance(data, LongTailData):
        raise DataError(
            f"{what}: data must come from fassl.tensor_data or fassl.dataset_data, got "
            f"{type(data).__name__}"
        )
    return data


def _config_of(what: str, cfg: Config | None, overrides: tuple[str, ...], *base: str) -> Config:
    """The caller's ``cfg`` (a checked copy: nothing given is changed in place), or one
    made from ``overrides``; both at once would drop the overrides, so that is an error."""
    if cfg is None:
        return make_config(None, *base, *overrides)
    if overrides:
        raise ConfigError(
            f"{what}: give key=value overrides or cfg=, not both (fassl.make_config applies "
            "overrides to a recipe)"
        )
    if not isinstance(cfg, Config):
        raise ConfigError(f"{what}: cfg must be a fassl.Config, got {type(cfg).__name__}")
    return validate(copy.deepcopy(cfg))


@contextlib.contextmanager
def _own_random_streams(device: torch.device) -> Iterator[None]:
    """The global torch random streams (the CPU's, and the CUDA device's when used) held
    by this call alone (another thread's call waits) and left as the caller had them once
    the block ends: a call seeds its own run, not the script."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with _RANDOM_STREAMS, torch.random.fork_rng(devices=devices):
        yield


def _own_backbone(backbone: Any, feature_dim: int | None, cfg: Config) -> nn.Module:
    """A copy of the caller's module with ``out_dim`` set; ``cfg.model.arch`` names its
    class (``module:<Class>``) in the settings and checkpoints the run records."""
    if not isinstance(backbone, nn.Module):
        raise ConfigError(f"fit: backbone must be a torch module, got {type(backbone).__name__}")
    dim = feature_dim or getattr(backbone, "out_dim", None)
    dim = dim or getattr(backbone, "num_features", None)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ConfigError(
            f"fit: the feature size of {type(backbone).__name__} is unknown: pass feature_dim="
        )
    own = copy.deepcopy(backbone)
    own.out_dim = dim
    cfg.model.arch = f"{CUSTOM}:{type(backbone).__qualname__}"
    return own


def fit(
    method: str,
    data: LongTailData,
    *overrides: str,
    cfg: Config | None = None,
    out_dir: str | Path | None = None,
    init: dict[str, torch.Tensor] | None = None,
    backbone: nn.Module | None = None,
    feature_dim: int | None = None,
) -> Method:
    """Train one method (a name of ``fassl.methods.METHODS``) on ``data`` with the one
    training loop; returns the trained method (``.backbone`` is what the probes read,
    ``.export_state()`` what later stages load). ``overrides`` are ``key=value`` keys
    (``optim.epochs=5``); ``out_dir`` keeps checkpoints and logs (a killed call resumes
    from it), by default a temporary folder. ``init`` starts from an exported state.

    ``backbone``: any module mapping (N, 3, H, W) images to (N, ``feature_dim``)
    features, for a model no library registers (``model.arch=timm:<name>`` /
    ``torchvision:<name>`` build those from the config). A copy is trained, the module
    given is left as it was; ``feature_dim`` defaults to its ``out_dim`` or
    ``num_features``. Its checkpoints load back with the module (``init=``), not by name.

    The same checks as ``fassl pretrain``: the folder is locked while training, and a
    folder trained with other settings is a RunConflict naming them (not resumed with
    the new ones). The run is seeded with ``seed``; the global torch random streams are
    left as the caller had them. Calls in several threads train one after another (the
    random streams are the process's), each the weights it trains alone."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: one of {list(METHODS)}")
    cfg = _config_of("fit", cfg, overrides, f"method={method}")
    data = _check_data(data, "fit")
    own = None if backbone is None else _own_backbone(backbone, feature_dim, cfg)
    check_batch_size(cfg, data, cfg.optim)
    if own is None:  # a library model that cannot take the images says so before training
        check_backbone(cfg.model.arch, cfg.model.kwargs, data.image_size)
    rt = runtime_for(cfg.train)
    run_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="fassl-"))
    with run_lock(run_dir), _own_random_streams(rt.device):
        settings = check_stage(cfg, method, cfg.optim, run_dir)
        record_settings(run_dir, settings)
        torch.manual_seed(cfg.seed)
        model = build_method(cfg, method, init, backbone=own)
        Trainer(model, data, cfg, cfg.optim, run_dir, rt, method).fit()
    return model


def fit_pipeline(
    data: LongTailData,
    *overrides: str,
    cfg: Config | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """FASSL end to end on ``data`` (teacher, prototypes, student, probes) into
    ``out_dir``, as ``fassl pipeline`` does (its lock and settings checks included);
    returns results.json's content. The global torch random streams are left as they
    were."""
    cfg = _config_of("fit_pipeline", cfg, overrides)
    data = _check_data(data, "fit_pipeline")
    cfg.out_dir = str(out_dir or tempfile.mkdtemp(prefix="fassl-pipeline-"))
    rt = runtime_for(cfg.train)
    with _own_random_streams(rt.device):
        return run_pipeline(cfg, rt, data=data)


def embed(
    net: nn.Module,
    images: torch.Tensor | np.ndarray,
    data: LongTailData | None = None,
    *,
    batch_size: int = 512,
    runtime: Runtime | None = None,
) -> torch.Tensor:
    """float32 (N, D) features of (N, 3, H, W) ``images`` through ``net`` (a backbone, in
    eval mode), normalised with ``data``'s statistics (else their own). Pixels as
    everywhere in the API: uint8 0..255 or float 0..1 (a tensor or a numpy array)."""
    if not isinstance(net, nn.Module):
        raise DataError(f"embed: net must be a torch module, got {type(net).__name__}")
    if (
        not isinstance(images, torch.Tensor | np.ndarray)
        or images.ndim != 4
        or images.shape[1] != 3
    ):
        shape = getattr(images, "shape", None)
        raise DataError(f"embed: images must be a (N, 3, H, W) tensor or array, got {shape}")
    if batch_size < 1:
        raise DataError(f"embed: batch_size must be >= 1, got {batch_size}")
    if images.shape[0] == 0:
        raise DataError(f"embed: images holds no images (shape {tuple(images.shape)})")
    arr = _pixels(images.numpy() if isinstance(images, torch.Tensor) else images, "embed")
    pixels = torch.from_numpy(np.ascontiguousarray(arr))
    if data is not None:
        mean, std = _check_data(data, "embed").mean, data.std
    else:
        mean, std = channel_stats(pixels)
    rt = runtime or Runtime.cpu()
    return embed_images(net, pixels, mean, std, rt, batch_size, progress=False)


def probe(net: nn.Module, data: LongTailData, *overrides: str, cfg: Config | None = None) -> dict:
    """The linear probes (standard and few-shot) and kNN of a backbone on labeled
    ``data``: results.json's content (All / Frequent / Medium / Rare / Std per probe)."""
    cfg = _config_of("probe", cfg, overrides)
    data = _check_data(data, "probe")
    if not data.labeled:
        raise DataError(f"probe: {data.name} has no labels; the probes need labeled data")
    rt = runtime_for(cfg.train)
    with _own_random_streams(rt.device):
        return evaluate(net.to(rt.device), data, cfg.probe, rt, cfg.seed)
