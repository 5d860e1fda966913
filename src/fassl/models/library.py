"""Backbones from a model library: ``model.arch=timm:<name>`` or ``torchvision:<name>``.

The model is built without pretrained weights (nothing is downloaded at run time), with
the library's own keyword arguments (``model.kwargs``) and without its classifier, so it
returns pooled features; its parameter names stay the library's, so an export loads back
into the library with no key mapping (``fassl export``). ``out_dim`` is set on the model
from the library (the size of timm's pooled features, the input of torchvision's last
linear layer) and the projection head sizes itself from it. Both libraries are optional
extras: they are imported here, when such a model is asked for.

Whether a model takes the run's images at all (a ViT built for 224 px, an Inception too
deep for 32 px) is known from the config: ``check_images`` runs one training-mode forward
of two images on the meta device (no memory, no arithmetic) before any data is loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fassl.errors import ConfigError
from fassl.registry import LIBRARIES, split_arch

# keys that would fetch or load weights, or give the model a classifier
LOCAL = "weights are never downloaded: name a local .safetensors file in train.init_from"
REFUSED_KWARGS = {
    "pretrained": LOCAL,
    "weights": LOCAL,
    "pretrained_cfg": LOCAL,
    "pretrained_cfg_overlay": LOCAL,
    "checkpoint_path": LOCAL,
    "num_classes": "the backbone is built without a classifier",
}

# torchvision models whose training forward also returns the logits of auxiliary
# classifiers (a tuple, not features) unless built without them
AUX_LOGITS = ("googlenet", "inception_v3")
# the keyword that sets the input size of the models that fix one (ViTs, Swins)
SIZE_KEYWORD = {"timm": "img_size", "torchvision": "image_size"}
# sizes tried when the run's size fails, to say one the model takes
SIZES_TO_TRY = (64, 96, 128, 224, 299, 512)


def _import(library: str) -> Any:
    """The library module, or one line saying how to install it."""
    try:
        if library == "timm":
            import timm

            return timm
        import torchvision

        return torchvision
    except ImportError as err:
        raise ConfigError(
            f"model.arch={library}:...: {library} is not installed "
            f"(pip install '{LIBRARIES[library]}'): {err}"
        ) from err


def classifier_name(net: nn.Module) -> str:
    """The dotted name of ``net``'s last linear layer (torchvision's classifier)."""
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(f"{type(net).__name__} has no linear classifier to take features before")
    return names[-1]


def _without_classifier(net: nn.Module) -> tuple[nn.Module, int, str]:
    name = classifier_name(net)
    head = net.get_submodule(name)
    assert isinstance(head, nn.Linear)
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, nn.Identity())
    return net, head.in_features, name


def _library_kwargs(library: str, name: str, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``model.kwargs`` checked, plus what this project builds every such model with:
    no auxiliary classifiers unless asked for (they are never trained here)."""
    kwargs = dict(kwargs or {})
    for key in kwargs:
        if key in REFUSED_KWARGS:
            raise ConfigError(f"config key 'model.kwargs.{key}': {REFUSED_KWARGS[key]}")
    if library == "torchvision" and name in AUX_LOGITS:
        kwargs.setdefault("aux_logits", False)
    return kwargs


def _build(library: str, name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, int, str]:
    """(the model without classifier, its feature size, the torchvision layer removed)."""
    lib = _import(library)
    try:
        if library == "timm":
            net = lib.create_model(name, pretrained=False, num_classes=0, **kwargs)
            # the pooled output: timm's head_hidden_size when a head layer follows the
            # pooling (MobileNetV3's 1024 after 288 channels), else num_features
            hidden = getattr(net, "head_hidden_size", None)
            return net, int(hidden or net.num_features), ""
        net = lib.models.get_model(name, weights=None, **kwargs)
        return _without_classifier(net)
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        raise ConfigError(
            f"config keys 'model.arch' / 'model.kwargs': {library} cannot build {name!r} "
            f"with {kwargs}: {err}"
        ) from err


def build_library_backbone(arch: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The library model ``arch`` names, without weights or classifier, with ``out_dim``
    (its feature size) and ``removed_classifier`` (the torchvision layer replaced by an
    identity; "" for timm, built without one) set on it."""
    library, name = split_arch(arch)
    assert library in LIBRARIES, arch
    net, out_dim, removed = _build(library, name, _library_kwargs(library, name, kwargs))
    net.out_dim = out_dim
    net.removed_classifier = removed
    return net


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _forward_problem(
    library: str, name: str, kwargs: dict[str, Any], size: int, device: str
) -> str | None:
    """Why a freshly built model cannot train on two (3, size, size) images on ``device``
    (its training forward fails or returns no (2, out_dim) feature tensor); None if it
    can. The model is built for this alone, so no model's state changes; the global
    random streams are left as they were (dropout draws from them on a real device)."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        net, out_dim, _ = _build(library, name, kwargs)
        net.train()
        with torch.no_grad():
            try:
                out = net(torch.zeros(2, 3, size, size))
            except Exception as err:  # any library's failure: reported, named, in one line
                return _first_line(err)
    if not isinstance(out, torch.Tensor):
        return f"its training forward returns a {type(out).__name__}, not one feature tensor"
    if tuple(out.shape) != (2, out_dim):
        return f"it returns features of shape {tuple(out.shape)}, not (2, {out_dim})"
    return None


def _trains_on(library: str, name: str, kwargs: dict[str, Any], size: int) -> str | None:
    """``_forward_problem`` on the meta device; a failure there is confirmed on two real
    images on the CPU (an operation the meta device lacks is no fault of the model)."""
    try:
        if _forward_problem(library, name, kwargs, size, "meta") is None:
            return None
    except ConfigError:  # a model whose initialisation needs real tensors
        pass
    return _forward_problem(library, name, kwargs, size, "cpu")


def _flow(kwargs: dict[str, Any]) -> str:
    """A mapping as a YAML flow mapping, as ``model.kwargs=`` takes it."""
    items = (f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in kwargs.items())
    return "{" + ", ".join(items) + "}"


def _what_to_set(
    library: str, name: str, kwargs: dict[str, Any], given: dict[str, Any], size: int
) -> str:
    """What makes the model take the run's images: its size keyword (a ViT's img_size) at
    ``size``, else a data.image_size it takes, else another model."""
    keyword = SIZE_KEYWORD[library]
    if given.get(keyword) != size:
        with_size = {**kwargs, keyword: size}
        try:
            fits = _forward_problem(library, name, with_size, size, "meta") is None
        except ConfigError:  # the model has no such keyword
            fits = False
        if fits:
            return f"set model.kwargs={_flow({**given, keyword: size})}"
    for other in SIZES_TO_TRY:
        if other > size and _forward_problem(library, name, kwargs, other, "meta") is None:
            return f"set data.image_size={other} (the smallest of {list(SIZES_TO_TRY)} it takes)"
    return "choose another model.arch (or model.kwargs)"


def check_images(arch: str, kwargs: dict[str, Any] | None, image_size: int) -> None:
    """A ConfigError naming ``model.arch``, what fails and what to set when the library
    model ``arch`` cannot train on ``image_size`` px images (checked before any data is
    loaded: otherwise a ViT built for 224 px fails with a traceback at the first step)."""
    library, name = split_arch(arch)
    assert library in LIBRARIES, arch
    given = dict(kwargs or {})
    full = _library_kwargs(library, name, given)
    problem = _trains_on(library, name, full, image_size)
    if problem is None:
        return
    if "aux_logits" in given and name in AUX_LOGITS:
        fix = "leave model.kwargs.aux_logits unset (auxiliary classifiers are not trained)"
    else:
        fix = _what_to_set(library, name, full, given, image_size)
    raise ConfigError(
        f"config key 'model.arch': {arch} cannot train on data.image_size={image_size} "
        f"images ({problem}): {fix}"
    )
