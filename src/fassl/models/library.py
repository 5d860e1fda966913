"""Backbones from a model library: ``model.arch=timm:<name>`` or ``torchvision:<name>``.

The model is built without pretrained weights (nothing is downloaded at run time), with
the library's own keyword arguments (``model.kwargs``) and without its classifier, so it
returns pooled features; its parameter names stay the library's, so an export loads back
into the library with no key mapping (``fassl export``). ``out_dim`` is set on the model
from the library (timm's ``num_features``, the input of torchvision's last linear layer)
and the projection head sizes itself from it. Both libraries are optional extras: they
are imported here, when such a model is asked for.
"""

from __future__ import annotations

from typing import Any

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


def build_library_backbone(arch: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The library model ``arch`` names, without weights or classifier, with ``out_dim``
    (its feature size) and ``removed_classifier`` (the torchvision layer replaced by an
    identity; "" for timm, built without one) set on it."""
    library, name = split_arch(arch)
    assert library in LIBRARIES, arch
    kwargs = dict(kwargs or {})
    for key in kwargs:
        if key in REFUSED_KWARGS:
            raise ConfigError(f"config key 'model.kwargs.{key}': {REFUSED_KWARGS[key]}")
    lib = _import(library)
    try:
        if library == "timm":
            net = lib.create_model(name, pretrained=False, num_classes=0, **kwargs)
            out_dim, removed = int(net.num_features), ""
        else:
            net = lib.models.get_model(name, weights=None, **kwargs)
            net, out_dim, removed = _without_classifier(net)
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        raise ConfigError(
            f"config keys 'model.arch' / 'model.kwargs': {library} cannot build {name!r} "
            f"with {kwargs}: {err}"
        ) from err
    net.out_dim = out_dim
    net.removed_classifier = removed
    return net
