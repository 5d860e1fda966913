"""Does the re-balancing weight find the rare images? Label-using diagnostics only.

Labels never reach training; here they only measure, for a weight variant, the share of
Frequent / Medium / Rare images among the highest weights against their share in the
data (the enrichment), and the mean log-weight per group.
"""

from __future__ import annotations

import torch

from fassl.methods.fassl import WEIGHTS, log_weight, nearest_prototype_counts

GROUPS = ("frequent", "medium", "rare")


def group_of_images(labels: torch.Tensor, groups: dict[str, list[int]]) -> list[torch.Tensor]:
    """One boolean mask per group (in GROUPS order) over the images."""
    return [torch.isin(labels, torch.tensor(groups[g], dtype=labels.dtype)) for g in GROUPS]


def weight_enrichment(
    log_phi: torch.Tensor,
    labels: torch.Tensor,
    groups: dict[str, list[int]],
    top_fraction: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Group shares among the top ``top_fraction`` of weights vs. in all the data.

    An enrichment above 1 for Rare means the weight ranks rare images high, as FASSL
    intends; below 1 means it favours the other groups.
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
    for name, mask in zip(GROUPS, group_of_images(labels, groups), strict=True):
        base = mask.float().mean().item()
        share = mask[top].float().mean().item()
        out["base_share"][name] = base
        out["top_share"][name] = share
        out["enrichment"][name] = share / base if base > 0 else float("nan")
        out["mean_log_phi"][name] = log_phi[mask].mean().item() if mask.any() else float("nan")
    return out


def all_weight_diagnostics(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    groups: dict[str, list[int]],
    *,
    density_temperature: float = 0.1,
    knn_k: int = 10,
    top_fraction: float = 0.05,
) -> dict[str, dict[str, dict[str, float]]]:
    """Enrichment of every weight variant on the same features (clean images)."""
    features = features.float()
    bank = torch.nn.functional.normalize(features, dim=1)
    sizes = nearest_prototype_counts(features, prototypes).float()
    out = {}
    for weight in WEIGHTS:
        if weight == "none":
            continue
        if weight == "knn":
            # Every image is in the bank: drop its self-match by asking one more neighbour
            # and discounting it (cos(x, x) = 1).
            lp = log_weight("knn", features, prototypes, bank=bank, knn_k=knn_k + 1)
            lp = (lp * (knn_k + 1) + 1.0) / knn_k
        else:
            lp = log_weight(
                weight,
                features,
                prototypes,
                density_temperature=density_temperature,
                cluster_sizes=sizes,
            )
        out[weight] = weight_enrichment(lp, labels, groups, top_fraction)
    return out


def enrichment_table(diagnostics: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: per weight, mean log phi and top-share per group."""
    lines = [
        "| weight | mean log phi F / M / R | share in top: F / M / R | base share F / M / R |"
        " Rare enrichment |",
        "|---|---|---|---|---|",
    ]
    for weight, d in diagnostics.items():
        m, t, b = d["mean_log_phi"], d["top_share"], d["base_share"]
        lines.append(
            f"| {weight} | {' / '.join(f'{m[g]:+.4g}' for g in GROUPS)} | "
            f"{' / '.join(f'{t[g]:.3f}' for g in GROUPS)} | "
            f"{' / '.join(f'{b[g]:.3f}' for g in GROUPS)} | {d['enrichment']['rare']:.2f} |"
        )
    return "\n".join(lines)
