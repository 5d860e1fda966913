"""``fassl export``: the backbone for programs that know nothing of this package.

A timm or torchvision backbone (``model.arch=timm:<name>``) is written under its
library's own key names: ``timm.create_model(name, num_classes=0, **kwargs)`` or the
torchvision constructor (its classifier, named in ``backbone.json``, set to
``nn.Identity()``) loads ``backbone.safetensors`` as it is. For the project's own ResNet,
two files: ``backbone.safetensors``, a state dict under torchvision's ResNet key names
(conv1, bn1, layer1.0.conv1, ..., layer2.0.downsample.0, ...), and ``backbone.pt``,
TorchScript of the backbone (features in, no Python class needed). The classifier ``fc``
is absent: self-supervised training has none; set ``model.fc = nn.Identity()`` before
loading (the output is then the pooled feature). With the CIFAR stem (``cifar_stem`` in
``backbone.json``) conv1 is a 3x3 stride-1 convolution and there is no max-pool: build
the torchvision model with ``conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)`` and
``maxpool = nn.Identity()``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from fassl.encoders import load_encoder
from fassl.files import OutputSet
from fassl.models import is_library_arch
from fassl.models.resnet import ResNet
from fassl.registry import split_arch

STEM = {"stem.0.": "conv1.", "stem.1.": "bn1."}
SHORTCUT = "shortcut."


def block_names(backbone: ResNet) -> list[str]:
    """torchvision's ``layer<s>.<j>`` of each of our ``blocks.<n>``, in order.

    The stage of a block is read off its width: stage s has ``width * 2**(s-1)`` planes.
    """
    width = backbone.stem[0].out_channels
    names, seen = [], {}
    for block in backbone.blocks:
        stage = int(math.log2(block.conv1.out_channels // width)) + 1
        names.append(f"layer{stage}.{seen.get(stage, 0)}")
        seen[stage] = seen.get(stage, 0) + 1
    return names


def torchvision_key(key: str, blocks: list[str]) -> str:
    """Our backbone key -> torchvision's (``blocks.3.shortcut.0.weight`` ->
    ``layer2.1.downsample.0.weight`` where block 3 is the second of stage 2)."""
    for ours, theirs in STEM.items():
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    prefix, index, rest = key.split(".", 2)
    if prefix != "blocks":
        raise KeyError(f"no torchvision name for backbone key {key!r}")
    if rest.startswith(SHORTCUT):
        rest = "downsample." + rest[len(SHORTCUT) :]
    return f"{blocks[int(index)]}.{rest}"


def torchvision_state(backbone: ResNet) -> dict[str, torch.Tensor]:
    """The backbone's state dict under torchvision's key names (no ``fc``)."""
    blocks = block_names(backbone)
    return {
        torchvision_key(k, blocks): v.detach().cpu().contiguous()
        for k, v in backbone.state_dict().items()
    }


def torchscript(backbone: nn.Module) -> torch.jit.ScriptModule:
    """The backbone in eval mode as TorchScript (scripted, so any input size works).

    Recent PyTorch marks TorchScript deprecated in favour of torch.export, but a
    TorchScript file still loads with plain ``torch.jit.load`` (and in C++), which is
    the point of this export; the warning is silenced here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # the same notice in newer torch
        return torch.jit.script(backbone.eval())


def library_info(backbone: nn.Module, model: dict) -> dict:
    """backbone.json's entries for a library's model: how to build it to load the file."""
    library, name = split_arch(model["arch"])
    info = {"library": library, "name": name, "kwargs": model.get("kwargs", {})}
    if library == "timm":
        info["keys"] = "timm's own names: timm.create_model(name, num_classes=0, **kwargs)"
    else:
        removed = getattr(backbone, "removed_classifier", "")
        info["classifier"] = removed
        info["keys"] = (
            f"torchvision's own names: models.get_model(name, **kwargs), then "
            f"{removed} = nn.Identity()"
        )
    return info


def _scripted(backbone: nn.Module) -> torch.jit.ScriptModule | None:
    """TorchScript of a library's model, or None where the model does not script."""
    try:
        return torchscript(backbone)
    except Exception:  # scripting support varies by model: the state dict is the export
        return None


def export_backbone(checkpoint: Path, out: Path) -> list[Path]:
    """backbone.safetensors, backbone.pt (where the model scripts) and backbone.json into
    ``out``."""
    loaded = load_encoder(checkpoint)
    backbone = loaded.backbone
    model = loaded.meta["model"]
    info = {
        "source": str(checkpoint),
        "method": loaded.meta.get("method"),
        "arch": model["arch"],
        "feature_dim": backbone.out_dim,
    }
    if is_library_arch(model["arch"]):
        info |= library_info(backbone, model)
        state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
        scripted = _scripted(backbone)
    else:
        assert isinstance(backbone, ResNet)
        info |= {"width": model["width"], "cifar_stem": model["cifar_stem"]}
        info["keys"] = "torchvision ResNet names, no fc"
        state, scripted = torchvision_state(backbone), torchscript(backbone)
    if loaded.training_stats is not None:  # what images must be normalised with
        info["data_mean"], info["data_std"] = map(list, loaded.training_stats)
    meta = {k: str(v) for k, v in info.items()}
    with OutputSet(out) as files:  # renamed into place together once all are written
        save_file(state, str(files.path("backbone.safetensors")), meta)
        if scripted is not None:
            scripted.save(str(files.path("backbone.pt")))
        files.write_text("backbone.json", json.dumps(info, indent=2) + "\n")
    return [out / name for name in files.names]
