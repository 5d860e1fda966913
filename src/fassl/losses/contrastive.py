"""Contrastive losses: NT-Xent of SimCLR, SDCLR and BCL (negatives of the global batch) and
FASSL's frequency-aware prototype loss (Eq. 1-2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fassl import distributed
from fassl.float32 import float32_only


def _nt_xent_logits(z1: Tensor, z2: Tensor, temperature: float | Tensor) -> tuple[Tensor, Tensor]:
    """(2n, 2N) logits of this rank's anchors against the global batch, and each anchor's
    positive column: what ``nt_xent`` and ``nt_xent_per_image`` reduce."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(
            f"nt_xent needs two (n, D) tensors, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    all1 = distributed.gather_with_grad(z1)
    all2 = distributed.gather_with_grad(z2)
    total = all1.shape[0]  # N, the global number of images
    offset = distributed.rank() * n

    anchors = torch.cat([z1, z2], dim=0)  # (2n, D)
    candidates = torch.cat([all1, all2], dim=0)  # (2N, D): view 1 block, then view 2
    logits = anchors @ candidates.T / temperature

    local = torch.arange(n, device=z1.device)
    self_idx = torch.cat([offset + local, total + offset + local])
    pos_idx = torch.cat([total + offset + local, offset + local])
    rows = torch.arange(2 * n, device=z1.device)
    # An anchor is never its own candidate: exp(-inf) = 0 drops it from the softmax. The
    # -inf is filled on the device (new_full), not copied from the host.
    logits = logits.index_put((rows, self_idx), logits.new_full((), float("-inf")))
    return logits, pos_idx


@float32_only
def nt_xent(z1: Tensor, z2: Tensor, temperature: float | Tensor) -> Tensor:
    """NT-Xent of SimCLR (Chen et al., ICML 2020, Eq. 1), mean over this rank's anchors.

    Rows are L2-normalised, so similarities are cosines divided by ``temperature``.
    Anchors are this rank's 2n views (both ``z1`` and ``z2``, n rows each); the
    candidates are all 2N views of the global batch gathered from every rank
    (``gather_with_grad``), the anchor itself excluded. The positive of a view is
    the other view of the same image; the other 2N - 2 views are negatives.

    With equal local batches the mean over ranks of this loss is the full-batch loss,
    and the gather's backward makes DDP's gradient average the gradient of that mean.

    Args:
        z1: (n, D) first views of this rank's images.
        z2: (n, D) second views, row i pairs with row i of ``z1``.
        temperature: softmax temperature (0.2 in SDCLR's setup); a 0-d tensor for a
            scheduled temperature (``fassl.methods.temperature``).

    Returns:
        Scalar float32 loss.
    """
    logits, pos_idx = _nt_xent_logits(z1, z2, temperature)
    return F.cross_entropy(logits, pos_idx)


@float32_only
def nt_xent_per_image(z1: Tensor, z2: Tensor, temperature: float | Tensor) -> Tensor:
    """NT-Xent of each image: the mean of its two views' anchor losses, (n,).

    BCL (Zhou et al., ICML 2022, Sec. 4.1) tracks this per-image loss; its mean over the
    batch is ``nt_xent``. Same arguments as ``nt_xent``.

    Returns:
        (n,) float32 losses, carrying the gradient.
    """
    logits, pos_idx = _nt_xent_logits(z1, z2, temperature)
    per_anchor = F.cross_entropy(logits, pos_idx, reduction="none")
    return per_anchor.view(2, -1).mean(dim=0)


@float32_only
def prototype_scores(z: Tensor, prototypes: Tensor, normalize: bool) -> Tensor:
    """Similarity of each embedding to each prototype, h = P z (Eq. 1 of the FASSL paper).

    Args:
        z: (N, D) embeddings.
        prototypes: (K, D) prototype matrix P, one prototype per row.
        normalize: L2-normalise the rows of ``z`` and ``P`` first (cosine scores in
            [-1, 1]); False is the paper's raw inner product.

    Returns:
        (N, K) float32 scores h.
    """
    z = z.float()
    prototypes = prototypes.float()
    if normalize:
        z = F.normalize(z, dim=1)
        prototypes = F.normalize(prototypes, dim=1)
    return z @ prototypes.T


@float32_only
def prototype_contrastive_loss(
    z1: Tensor, z2: Tensor, prototypes: Tensor, temperature: float, normalize: bool
) -> Tensor:
    """L_contra of Eq. 2 of the FASSL paper: NT-Xent on the prototype scores h = P z.

    The cosine similarity of Eq. 2 is taken between score vectors h (K-dim), with
    temperature beta. Gradients reach both the embeddings and the prototypes.

    Args:
        z1: (n, D) teacher embeddings of the first views.
        z2: (n, D) teacher embeddings of the second views.
        prototypes: (K, D) prototype matrix P.
        temperature: beta (0.2 in the paper).
        normalize: L2-normalise z and P before Eq. 1, see ``prototype_scores``.

    Returns:
        Scalar float32 loss.
    """
    h1 = prototype_scores(z1, prototypes, normalize)
    h2 = prototype_scores(z2, prototypes, normalize)
    return nt_xent(h1, h2, temperature)
