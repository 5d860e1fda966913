"""Any backbone: timm and torchvision models for every method, SDCLR's masks and twins
over them, and the export that loads back into the library with no key mapping."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from fassl.config import load_config
from fassl.encoders import load_encoder
from fassl.errors import ConfigError
from fassl.features import embed_images, normalize_images
from fassl.methods import METHODS, build_method
from fassl.methods.base import EpochContext
from fassl.methods.sdclr import SDCLR
from fassl.models import build_backbone
from fassl.models.pruning import NORMS, PRUNED_LAYERS, DualNorm
from fassl.registry import arch_problem
from fassl.runtime import Runtime
from fassl.tools.export import export_backbone
from fassl.train.checkpoint import export_encoder
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

HAS_TIMM = importlib.util.find_spec("timm") is not None
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install timm)")
needs_torchvision = pytest.mark.skipif(
    not HAS_TORCHVISION, reason="torchvision is not installed (pip install torchvision)"
)

# Tiny models of each kind, at the tiny data's 16x16 images
TIMM_RESNET = ("timm:resnet10t", "{channels: [8, 16, 32, 64], stem_width: 8}")
TIMM_VIT = (
    "timm:vit_tiny_patch16_224",
    "{img_size: 16, patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}",
)
TORCHVISION = ("torchvision:mobilenet_v3_small", "{width_mult: 0.25}")
MODELS = [
    pytest.param(*TIMM_RESNET, marks=needs_timm, id="timm-resnet"),
    pytest.param(*TIMM_VIT, marks=needs_timm, id="timm-vit"),
    pytest.param(*TORCHVISION, marks=needs_torchvision, id="torchvision-mobilenet"),
]


def _cfg(tmp_path: Path, arch: str, kwargs: str, *overrides: str):
    return tiny_config(tmp_path, f"model.arch={arch}", f"model.kwargs={kwargs}", *overrides)


def _stage1_state(tmp_path: Path, arch: str, kwargs: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_method(_cfg(tmp_path / "s1", arch, kwargs), "fassl_prototypes").export_state()


@pytest.mark.trains
@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize(("arch", "kwargs"), MODELS)
def test_every_method_trains_a_step_on_a_library_backbone(tmp_path, arch, kwargs, name):
    if name == "dino" and arch == TIMM_VIT[0]:  # local crops: a ViT of one size refuses them
        fixed = _cfg(tmp_path, arch, kwargs)
        with pytest.raises(ConfigError, match=r"cannot take the 7 px crops .*dynamic_img_size"):
            Trainer(
                build_method(fixed, name),
                tiny_data(),
                fixed,
                fixed.optim,
                tmp_path,
                Runtime.cpu(),
                "s",
            )
        kwargs = kwargs[:-1] + ", dynamic_img_size: true, dynamic_img_pad: true}"
    cfg = _cfg(tmp_path, arch, kwargs)
    init = _stage1_state(tmp_path, arch, kwargs) if name == "fassl_rebalance" else None
    torch.manual_seed(0)
    method = build_method(cfg, name, init)
    trainer = Trainer(method, tiny_data(), cfg, cfg.optim, tmp_path, Runtime.cpu(), "s")
    trainer.model.train()
    method.on_epoch_start(EpochContext(0, cfg.optim.epochs, trainer.embed))
    before = [p.detach().clone() for p in method.encoder.backbone.parameters()]
    loss, _ = trainer.train_step(torch.arange(cfg.optim.batch_size), 0)
    assert torch.isfinite(loss)
    after = list(method.encoder.backbone.parameters())
    moved = sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert moved > len(after) // 2  # the step reached the library's weights


@pytest.mark.parametrize(("arch", "kwargs"), MODELS)
@pytest.mark.slow
def test_sdclr_masks_every_conv_and_linear_weight_and_twins_every_norm(tmp_path, arch, kwargs):
    cfg = _cfg(tmp_path, arch, kwargs, "sdclr.prune_ratio=0.5")
    method = build_method(cfg, "sdclr")
    assert isinstance(method, SDCLR)
    backbone = method.encoder.backbone
    layers = [n for n, m in backbone.named_modules() if isinstance(m, PRUNED_LAYERS)]
    assert len(method.masks()) == len(layers) > 0
    assert all(name.startswith("backbone.") for name in method.masks())
    # no normalisation layer is left without its twin, in the backbone or the head
    for name, m in method.encoder.named_modules():
        if isinstance(m, NORMS):
            assert name.endswith((".dense", ".pruned")), name
    assert any(isinstance(m, DualNorm) for m in backbone.modules())
    masks = torch.cat([m.flatten() for m in method.masks().values()])
    assert abs(1 - masks.float().mean().item() - 0.5) < 0.01  # one global share
    method.eval()
    x = torch.randn(4, 3, 16, 16)
    dense = method.encoder(x)[0]
    pruned = method.pruned_forward(x)[0]
    assert not torch.allclose(dense, pruned)
    # the export is the dense branch under the library's own names
    state = method.export_state()
    plain = build_backbone(arch, kwargs=cfg.model.kwargs)
    own = {f"backbone.{k}" for k in plain.state_dict()}
    assert {k for k in state if k.startswith("backbone.")} == own


def _export(tmp_path: Path, arch: str, kwargs: str) -> tuple[Path, dict]:
    cfg = _cfg(tmp_path, arch, kwargs)
    torch.manual_seed(0)
    method = build_method(cfg, "sdclr")
    with torch.no_grad():  # BatchNorm statistics that are not the initial ones
        method.train()
        method.encoder(torch.randn(8, 3, 16, 16) * 2 + 1)
    path = tmp_path / "encoder.safetensors"
    stats = {"data_mean": [0.4, 0.5, 0.6], "data_std": [0.2, 0.25, 0.3]}
    export_encoder(method, cfg, path, stats)
    export_backbone(path, tmp_path / "export")
    info = json.loads((tmp_path / "export" / "backbone.json").read_text())
    return path, info


def _library_features(model: nn.Module, tmp_path: Path, images: torch.Tensor) -> torch.Tensor:
    state = load_file(str(tmp_path / "export" / "backbone.safetensors"))
    model.load_state_dict(state)  # strict: the library's own names, nothing mapped
    x = normalize_images(images, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    with torch.no_grad():
        return model.eval()(x)


def _embedded(path: Path, images: torch.Tensor) -> torch.Tensor:
    loaded = load_encoder(path)
    mean, std = loaded.training_stats
    net = loaded.feature_net("backbone")
    return embed_images(net, images, mean, std, Runtime.cpu(), progress=False)


@needs_timm
@pytest.mark.parametrize(("arch", "kwargs"), [TIMM_RESNET, TIMM_VIT], ids=["resnet", "vit"])
def test_export_loads_into_timm_and_gives_the_embed_features(tmp_path, arch, kwargs):
    import timm

    path, info = _export(tmp_path, arch, kwargs)
    assert info["library"] == "timm" and info["kwargs"] == _cfg(tmp_path, arch, kwargs).model.kwargs
    model = timm.create_model(info["name"], num_classes=0, **info["kwargs"])
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    theirs = _library_features(model, tmp_path, images)
    torch.testing.assert_close(theirs, _embedded(path, images), atol=1e-5, rtol=1e-5)


@needs_torchvision
@pytest.mark.slow
def test_export_loads_into_torchvision_and_gives_the_embed_features(tmp_path):
    import torchvision

    path, info = _export(tmp_path, *TORCHVISION)
    assert info["library"] == "torchvision" and info["classifier"] == "classifier.3"
    model = torchvision.models.get_model(info["name"], **info["kwargs"])
    model.classifier[3] = nn.Identity()  # as backbone.json says
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    theirs = _library_features(model, tmp_path, images)
    torch.testing.assert_close(theirs, _embedded(path, images), atol=1e-5, rtol=1e-5)


@needs_timm
def test_an_export_of_one_model_is_refused_by_a_run_of_another(tmp_path):
    from fassl.encoders import check_encoder_file
    from fassl.errors import IncompatibleCheckpoint

    path, _ = _export(tmp_path, *TIMM_VIT)
    other = _cfg(tmp_path, TIMM_VIT[0], "{img_size: 16, patch_size: 8, depth: 1}")
    with pytest.raises(IncompatibleCheckpoint, match=r"model\.kwargs"):
        check_encoder_file(path, other.model, "train.init_from")
    with pytest.raises(IncompatibleCheckpoint, match=r"model\.arch"):
        check_encoder_file(path, tiny_config(tmp_path).model, "train.init_from")


def test_a_missing_library_is_one_line_saying_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    cfg = _cfg(tmp_path, "timm:resnet10t", "{}")
    with pytest.raises(ConfigError) as err:
        build_method(cfg, "simclr")
    message = str(err.value)
    assert "pip install 'fassl[timm]'" in message and "\n" not in message


@pytest.mark.parametrize(
    ("override", "wording"),
    [
        ("model.arch=resnet34", "not one of"),
        ("model.arch=keras:resnet", "not a model library"),
    ],
)
def test_an_unknown_arch_is_a_config_error_naming_the_key(tmp_path, override, wording):
    with pytest.raises(ConfigError, match=rf"model\.arch.*{wording}"):
        tiny_config(tmp_path, override)
    assert "names no model" in (arch_problem("timm:") or "")
    assert arch_problem("timm:resnet10t") is None and arch_problem("resnet50") is None


@needs_timm
@pytest.mark.parametrize("key", ["pretrained", "checkpoint_path", "num_classes"])
def test_weights_from_a_hub_are_refused(tmp_path, key):
    cfg = _cfg(tmp_path, "timm:resnet10t", f"{{{key}: true}}")
    with pytest.raises(ConfigError, match=rf"model\.kwargs\.{key}"):
        build_method(cfg, "simclr")


@needs_timm
def test_an_unknown_model_or_keyword_names_the_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.arch.*no_such_net"):
        build_method(_cfg(tmp_path, "timm:no_such_net", "{}"), "simclr")
    with pytest.raises(ConfigError, match=r"model\.kwargs.*not_a_keyword"):
        build_method(_cfg(tmp_path, "timm:resnet10t", "{not_a_keyword: 3}"), "simclr")


def test_kwargs_travel_through_the_config_as_a_mapping(tmp_path):
    overrides = ["model.arch=timm:vit_small_patch16_224", "model.kwargs={img_size: 32}"]
    cfg = load_config(None, overrides)
    assert cfg.model.kwargs == {"img_size": 32}


class TinyNet(nn.Module):
    """A backbone no library registers: conv, GroupNorm, pooled features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x))).mean((2, 3))


@pytest.mark.trains
@pytest.mark.parametrize("name", ["simclr", "sdclr"])
def test_the_api_trains_a_module_given_to_it_and_leaves_the_original(tmp_path, name):
    import fassl

    net = TinyNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    overrides = ("optim.epochs=1", "model.proj_hidden=16", "model.proj_dim=8")
    cfg = tiny_config(tmp_path, *overrides)
    run = tmp_path / "run"
    method = fassl.fit(name, tiny_data(), cfg=cfg, out_dir=run, backbone=net, feature_dim=8)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(isinstance(m, DualNorm) for m in net.modules())
    trained = method.backbone
    assert not torch.equal(dict(trained.named_parameters())["conv.weight"], before["conv.weight"])
    assert fassl.embed(trained, tiny_data().test.images).shape[1] == 8
    recorded = json.loads((run / "settings.json").read_text())
    assert "module:TinyNet" in json.dumps(recorded)


def test_a_module_without_a_known_feature_size_asks_for_it(tmp_path):
    import fassl

    with pytest.raises(ConfigError, match="feature_dim"):
        fassl.fit("simclr", tiny_data(), cfg=tiny_config(tmp_path), backbone=TinyNet())


# docs/backbones.md's commands, one epoch each: (method, arch, kwargs, run folder, the
# page's snippet that loads the export, by its place)
BACKBONES = Path(__file__).resolve().parents[2] / "docs" / "backbones.md"
DOCUMENTED_RUNS = [
    pytest.param(
        "sdclr",
        "timm:resnet10t",
        "{channels: [8, 16, 32, 64], stem_width: 8}",
        "r10t",
        0,
        marks=needs_timm,
        id="timm-resnet",
    ),
    pytest.param(
        "simclr",
        "timm:vit_tiny_patch16_224",
        "{img_size: 32, patch_size: 4, depth: 2}",
        "vit",
        None,
        marks=needs_timm,
        id="timm-vit",
    ),
    pytest.param(
        "simclr",
        "torchvision:mobilenet_v3_small",
        "{width_mult: 0.25}",
        "mobilenet",
        1,
        marks=needs_torchvision,
        id="torchvision",
    ),
]


def documented_snippets() -> list[str]:
    text = BACKBONES.read_text()
    block = text.split("<!-- backbone-snippets:begin -->")[1].split("<!-- backbone-snippets:end")[0]
    return re.findall(r"```python\n(.*?)```", block, re.S)


@pytest.mark.trains
@pytest.mark.parametrize(("method", "arch", "kwargs", "name", "snippet"), DOCUMENTED_RUNS)
def test_the_documented_commands_train_probe_export_load_and_embed_a_library_backbone(
    tmp_path, monkeypatch, method, arch, kwargs, name, snippet
):
    from fassl.cli import main

    monkeypatch.chdir(tmp_path)  # the page's relative runs/ folders
    run, cpu = Path("runs") / name, ("train.device=cpu", "train.precision=fp32")
    common = (f"model.arch={arch}", f"model.kwargs={kwargs}", *cpu, "train.progress=false")
    args = ["pretrain", "demo", f"method={method}", "optim.epochs=1", f"out_dir={run}"]
    assert main([*args, *common]) == 0
    assert json.loads((run / "results.json").read_text())  # probed from the export's metadata
    encoder = run / "encoder.safetensors"
    assert main(["export", str(encoder), "--out", str(run / "export")]) == 0
    if snippet is not None:  # as written on the page, then against fassl's own features
        scope: dict = {}
        exec(documented_snippets()[snippet], scope)
        images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        info = scope["info"]
        x = normalize_images(images, tuple(info["data_mean"]), tuple(info["data_std"]))
        with torch.no_grad():
            theirs = scope["model"].eval()(x)
        torch.testing.assert_close(theirs, _embedded(encoder, images), atol=1e-5, rtol=1e-5)
    out = tmp_path / "emb"
    assert main(["embed", str(encoder), "digits", "--out", str(out), "train.device=cpu"]) == 0
    assert (out / "embeddings.npy").is_file()


@needs_timm
@pytest.mark.slow
@pytest.mark.parametrize("name", ["simclr", "sdclr"])
@pytest.mark.parametrize(("arch", "kwargs"), [TIMM_RESNET, TIMM_VIT], ids=["resnet", "vit"])
def test_a_library_backbone_compiles_to_one_graph_like_the_own_resnet(tmp_path, arch, kwargs, name):
    from torch import _dynamo as dynamo

    from tests.train.test_compile import CountingBackend, trainer

    dynamo.reset()
    dynamo.utils.counters.clear()
    overrides = (f"model.arch={arch}", f"model.kwargs={kwargs}")
    eager = trainer(tmp_path / "eager", name, overrides)
    eager.fit()
    backend = CountingBackend()
    compiled = trainer(tmp_path / "compiled", name, overrides, backend)
    compiled.fit()
    assert compiled.forward.active  # nothing fell back to eager
    assert not dict(dynamo.utils.counters["graph_break"])
    assert backend.graphs == 1
    expected = eager.method.state_dict()
    for key, value in compiled.method.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-5, msg=key)
    dynamo.reset()


@needs_timm
@pytest.mark.slow
def test_a_library_weights_file_starts_a_run_through_init_from(tmp_path):
    import timm
    from safetensors.torch import save_file

    from fassl.cli import main
    from fassl.encoders import check_encoder_file, load_init
    from fassl.errors import IncompatibleCheckpoint

    arch, kwargs = TIMM_RESNET
    cfg = _cfg(tmp_path, arch, kwargs)
    # as a hub's file is: the library's own names, its classifier included
    theirs = timm.create_model("resnet10t", num_classes=10, **cfg.model.kwargs)
    path = tmp_path / "model.safetensors"
    save_file(theirs.state_dict(), str(path))
    check_encoder_file(path, cfg.model, "train.init_from")
    method = build_method(cfg, "simclr", load_init(path, cfg.model, "train.init_from"))
    expected = theirs.state_dict()
    for key, value in method.encoder.backbone.state_dict().items():
        assert torch.equal(value, expected[key]), key
    run = tmp_path / "run"
    args = ["pretrain", "demo", f"model.arch={arch}", f"model.kwargs={kwargs}", "optim.epochs=1"]
    cpu = ["train.device=cpu", "train.precision=fp32", "train.progress=false"]
    assert main([*args, *cpu, f"train.init_from={path}", f"out_dir={run}"]) == 0
    other = tmp_path / "other.safetensors"  # the full-width model: nothing fits
    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), str(other))
    with pytest.raises(IncompatibleCheckpoint, match=r"train\.init_from.*shape mismatches"):
        check_encoder_file(other, cfg.model, "train.init_from")


def test_fassl_info_names_the_model_libraries_without_importing_them(monkeypatch):
    import importlib.metadata

    from fassl import runtime

    def version(name: str) -> str:
        if name == "timm":
            raise importlib.metadata.PackageNotFoundError(name)
        return "9.9"

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert runtime.library_versions() == "timm not installed, torchvision 9.9"
    assert any(line.startswith("model libraries:") for line in runtime.machine_lines())


@needs_timm
def test_the_layout_rule_reads_a_library_model_as_it_reads_the_own_resnet():
    import timm

    from fassl.runtime import SAFE_POINTWISE_CHANNELS, min_strided_pointwise_channels

    rt = Runtime(torch.device("cpu"))  # memory_format=auto
    # timm's resnet18 downsamples with strided 1x1 convs (resnet10t pools instead)
    narrow = build_backbone("timm:resnet18", kwargs={"channels": [8, 16, 32, 64]})
    assert min_strided_pointwise_channels(narrow) < SAFE_POINTWISE_CHANNELS
    assert rt.memory_format_for(narrow) == torch.contiguous_format  # oneDNN's unsafe kernel
    assert rt.memory_format_for(timm.create_model("resnet18")) == torch.channels_last
    pooled = build_backbone(TIMM_RESNET[0], kwargs={"channels": [8, 16, 32, 64]})
    assert rt.memory_format_for(pooled) == torch.channels_last  # no strided 1x1 conv
