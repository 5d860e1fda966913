"""Does the re-balancing weight find the rare images? Label-using diagnostics only.

Labels never reach training; here they only measure, for a weight variant, the share of
Frequent / Medium / Rare images among the highest weights against their share in the
data (the enrichment), and the mean log-weight per group.
"""

from __future__ import annotations

import torch

from fassl.config import RebalanceConfig
from fassl.data import GROUPS
from fassl.rebalance.reweighters import REWEIGHTERS, NoWeight, build_reweighter


def group_of_images(labels: torch.Tensor, groups: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """A boolean mask over the images per group that has images (in GROUPS order); an
    empty or absent group has none, so nothing below divides by zero or averages nothing."""
    masks = {}
    for g in GROUPS:
        mask = torch.isin(labels, torch.tensor(groups.get(g, []), dtype=labels.dtype))
        if mask.any():
            masks[g] = mask
    return masks


def weight_enrichment(
    log_phi: torch.Tensor,
    labels: torch.Tensor,
    groups: dict[str, list[int]],
    top_fraction: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Group shares among the top ``top_fraction`` of weights vs. in all the data.

    An enrichment above 1 for Rare means the weight ranks rare images high, as FASSL
    intends; below 1 means it favours the other groups. A group without images is
    absent from every entry.
    """
    log_phi, labels = log_phi.float().cpu(), labels.cpu()
    n_top = max(1, round(top_fraction * len(log_phi)))
    top = torch.zeros(len(log_phi), dtype=torch.bool)
    top[torch.topk(log_phi, n_top).indices] = True
    out: dict[str, dict[str, float]] = {
        "base_share": {},
        "top_share": {},
        "enrichment": {},
        "mean_log_phi": {},
    }
    for name, mask in group_of_images(labels, groups).items():
        base = mask.float().mean().item()
        share = mask[top].float().mean().item()
        out["base_share"][name] = base
        out["top_share"][name] = share
        out["enrichment"][name] = share / base
        out["mean_log_phi"][name] = log_phi[mask].mean().item()
    return out


def all_weight_diagnostics(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    groups: dict[str, list[int]],
    cfg: RebalanceConfig,
    top_fraction: float = 0.05,
) -> dict[str, dict[str, dict[str, float]]]:
    """Enrichment of every registered weight variant on the same clean-image features,
    each with its settings from ``cfg`` (phi = 1 has nothing to rank and is left out)."""
    features = features.float()
    out = {}
    for name in REWEIGHTERS:
        reweighter = build_reweighter(name, cfg)
        if isinstance(reweighter, NoWeight):
            continue
        reweighter.fit(prototypes, features)
        out[name] = weight_enrichment(reweighter.dataset_log_phi(), labels, groups, top_fraction)
    return out
