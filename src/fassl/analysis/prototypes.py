"""Which images do the prototypes stand for? (the paper's Table 4 and Figure 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fassl.data import GROUPS
from fassl.prototypes import cosine_scores, nearest_images


def prototype_group_shares(
    features: torch.Tensor,
    prototypes: torch.Tensor,
    labels: torch.Tensor,
    groups: dict[str, list[int]],
) -> dict[str, float]:
    """Share of prototypes whose nearest image is from a Frequent / Medium / Rare class
    (the groups that have classes)."""
    idx = nearest_images(features, prototypes).cpu()
    cls = labels.cpu()[idx]
    present = [g for g in GROUPS if groups.get(g)]
    return {g: torch.isin(cls, torch.tensor(groups[g])).float().mean().item() for g in present}


@dataclass
class GridLabels:
    """Labels of the images in a retrieval grid (evaluation only): captions and groups."""

    labels: torch.Tensor  # (N,) class ids, -1 unknown
    classes: list[str]
    groups: dict[str, list[int]]

    def group_of(self, image: int) -> str:
        label = int(self.labels[image])
        return next((g for g in GROUPS if label in self.groups.get(g, [])), "")

    def caption(self, image: int) -> str:
        """``class (Group)`` of an image."""
        label = int(self.labels[image])
        if not 0 <= label < len(self.classes):
            return ""
        group = self.group_of(image)
        return f"{self.classes[label]} ({group.capitalize()})" if group else self.classes[label]


def retrieval_rows(features: torch.Tensor, prototypes: torch.Tensor, per_row: int) -> torch.Tensor:
    """(K, m) the m = min(per_row, N) images most similar to each prototype, most similar
    first: distinct images within a row (a row is shorter when the data has fewer)."""
    scores = cosine_scores(features.float().cpu(), prototypes.float().cpu())
    m = min(per_row, scores.shape[0])
    return scores.topk(m, dim=0).indices.T


def grid_order(
    rows: torch.Tensor, counts: torch.Tensor, labels: GridLabels | None, max_rows: int
) -> list[tuple[int, str]]:
    """(prototype, group) of the rows to draw: grouped Frequent, Medium, Rare (by the class
    of each prototype's nearest image), each group's most occupied prototypes first, at
    most ``max_rows`` shared evenly among the groups present."""
    group = [labels.group_of(int(r[0])) if labels else "" for r in rows]
    names = [g for g in (*GROUPS, "") if g in group]
    by_group = {
        g: sorted((k for k in range(len(rows)) if group[k] == g), key=lambda k: -int(counts[k]))
        for g in names
    }
    picked: dict[str, list[int]] = {g: [] for g in names}
    taken = 0
    for turn in range(len(rows)):
        for g in names:
            if turn < len(by_group[g]) and taken < max_rows:
                picked[g].append(by_group[g][turn])
                taken += 1
    return [(k, g) for g in names for k in picked[g]]
