"""The multi-view contract: a method declares its views (``ViewSpec``), the augmentation
makes them, the loop hands them over as a list.

``ThreeViews`` below is a whole method in this one file (two global crops and a smaller
local crop), registered in one line and trained through the real ``Trainer``.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from fassl.augment import boost as B
from fassl.augment import views as A
from fassl.config import AugmentConfig, Config
from fassl.features import normalize_images
from fassl.losses import nt_xent
from fassl.methods import METHODS, Method, State, build_method
from fassl.methods.base import multi_view_forward, two_view_forward
from fassl.models import Encoder
from fassl.runtime import Runtime
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
OFF = dict(crop_scale_min=1.0, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
LOCAL = 8  # the local crop's side; the tiny data's images are 16 x 16


class ThreeViews(Method):
    """NT-Xent between the two global crops and between the local crop and the first
    global one; records the shapes of the views it was given."""

    name = "three_views"
    view_spec: ClassVar[A.ViewSpec] = A.ViewSpec(
        global_crops=2, local_crops=1, local_size=LOCAL, local_scale=(0.2, 0.5)
    )

    def __init__(self, encoder: Encoder) -> None:
        super().__init__(encoder)
        self.received: list[list[tuple[int, ...]]] = []

    @classmethod
    def from_config(
        cls, cfg: Config, encoder: Encoder, init: State | None, source: str
    ) -> ThreeViews:
        return cls(encoder)

    def forward(self, views: list[torch.Tensor]):  # type: ignore[override]
        self.received.append([tuple(v.shape) for v in views])
        _, (g1, g2, local) = multi_view_forward(self.encoder, views)  # one forward per size
        loss = nt_xent(g1, g2, 0.2) + nt_xent(local, g1, 0.2)
        return loss, {"loss": loss.detach()}


def batch(n: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.trains
def test_a_three_view_method_trains_through_the_loop(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, ThreeViews.name, ThreeViews)  # its registry line
    cfg = tiny_config(tmp_path)
    torch.manual_seed(0)
    method = build_method(cfg, ThreeViews.name)
    before = {k: v.clone() for k, v in method.encoder.state_dict().items()}
    trainer = Trainer(method, tiny_data(), cfg, cfg.optim, tmp_path, Runtime.cpu(), "s")
    trainer.fit()
    steps = trainer.total_steps
    assert steps == 10 and len(method.received) == steps
    n = cfg.optim.batch_size
    expected = [(n, 3, 16, 16), (n, 3, 16, 16), (n, 3, LOCAL, LOCAL)]
    assert all(shapes == expected for shapes in method.received), method.received[0]
    after = method.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_views_of_the_spec_in_its_order() -> None:
    spec = A.ViewSpec(global_crops=2, global_size=12, local_crops=3, local_size=6)
    views = A.ViewAugment(AugmentConfig(), 16, MEAN, STD, spec=spec)(batch())
    assert [tuple(v.shape) for v in views] == [(8, 3, 12, 12)] * 2 + [(8, 3, 6, 6)] * 3
    assert all(v.dtype == torch.float32 for v in views)
    assert not torch.allclose(views[2], views[3])  # local crops are drawn independently


def test_a_whole_image_local_crop_is_the_resized_image() -> None:
    spec = A.ViewSpec(local_crops=1, local_size=LOCAL, local_scale=(1.0, 1.0))
    x = batch()
    views = A.ViewAugment(AugmentConfig(**OFF), 16, MEAN, STD, spec=spec)(x)
    resized = F.interpolate(x.float() / 255, size=LOCAL, mode="bilinear", align_corners=False)
    expected = (resized - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(views[2], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(views[0], normalize_images(x, MEAN, STD), atol=1e-5, rtol=0)


def test_per_view_settings_make_asymmetric_views() -> None:
    x = batch()
    plain = normalize_images(x, MEAN, STD)
    solarized = normalize_images(torch.where(x >= 128, 255 - x, x), MEAN, STD)
    spec = A.ViewSpec(per_view=(A.View(solarize_p=1.0), A.View()))
    v1, v2 = A.ViewAugment(AugmentConfig(**OFF), 16, MEAN, STD, spec=spec)(x)
    torch.testing.assert_close(v1, solarized, atol=1e-5, rtol=0)
    torch.testing.assert_close(v2, plain, atol=1e-5, rtol=0)
    spec = A.ViewSpec(per_view=(A.View(blur_p=0.0), A.View(blur_p=1.0)))
    v1, v2 = A.ViewAugment(AugmentConfig(**{**OFF, "blur_p": 0.5}), 16, MEAN, STD, spec=spec)(x)
    torch.testing.assert_close(v1, plain, atol=1e-5, rtol=0)
    assert not torch.allclose(v2, plain, atol=1e-2)


def test_per_view_settings_equal_to_the_config_draw_as_the_default() -> None:
    cfg = AugmentConfig(blur_p=0.5)
    same = A.ViewSpec(per_view=(A.View(blur_p=0.5), A.View(blur_p=0.5)))
    torch.manual_seed(0)
    default = A.ViewAugment(cfg, 16, MEAN, STD)(batch())
    torch.manual_seed(0)
    spelled = A.ViewAugment(cfg, 16, MEAN, STD, spec=same)(batch())
    assert all(torch.equal(a, b) for a, b in zip(default, spelled, strict=True))


def test_the_boost_applies_to_the_global_views_only() -> None:
    spec = A.ViewSpec(local_crops=2, local_size=LOCAL)
    aug = A.ViewAugment(AugmentConfig(), 16, MEAN, STD, B.BoostSpec("randaugment"), spec)
    x = batch()
    torch.manual_seed(0)
    still = aug(x, torch.zeros(8))  # strength 0: the same draws, nothing applied
    torch.manual_seed(0)
    boosted = aug(x, torch.ones(8))
    assert not torch.equal(still[0], boosted[0]) and not torch.equal(still[1], boosted[1])
    assert torch.equal(still[2], boosted[2]) and torch.equal(still[3], boosted[3])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(global_crops=0), "at least one global crop"),
        (dict(local_crops=2), "need a local_size"),
        (dict(local_crops=1, local_size=0), "local_size must be at least 1"),
        (dict(global_scale=(0.5, 0.2)), "global_scale"),
        (dict(per_view=(A.View(),) * 3), "per_view sets 3 views of 2"),
        (dict(per_view=(A.View(blur_p=1.5),)), r"per_view\[0\].blur_p"),
    ],
)
def test_a_bad_view_spec_is_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        A.ViewSpec(**kwargs)


def test_multi_view_forward_runs_one_batch_per_size(tmp_path) -> None:
    torch.manual_seed(0)
    encoder = build_method(tiny_config(tmp_path), "simclr").encoder.eval()
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, s, s, generator=g) for s in (16, 16, 8, 8, 8)]
    calls: list[int] = []
    encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    feats, proj = multi_view_forward(encoder, views)
    assert calls == [8, 12]  # the two globals together, then the three locals
    for view, f, p in zip(views, feats, proj, strict=True):
        alone_f, alone_p = encoder(view)
        torch.testing.assert_close(f, alone_f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(p, alone_p, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expected 2 views"):
        two_view_forward(encoder, views)
