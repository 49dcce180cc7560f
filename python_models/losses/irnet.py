"""IRNet's losses (Ahn, Cho & Kwak, CVPR 2019, Sec. 3.2-3.3; jiwoon-ahn/irn
``net/resnet50_irn.py`` ``AffinityDisplacementLoss``, ``step/train_irn.py``).

Pairs (p, q = p + o) within radius 10 of the stride-4 grid are labelled from
the IR labels (:func:`python_models.pseudo.affinity_pair_labels`):
background-positive, foreground-positive (same class) or negative.

- Affinity: ``a_pq = 1 - max B`` along the path p -> q
  (``wsss_ext.boundary_affinity``) in :func:`python_models.losses.affinity_loss`
  with weights (1/4, 1/4, 1/2): irn's ``(pos_bg / 2 + pos_fg / 2 + neg) / 2``.
- Displacement (:func:`displacement_loss`): with D the field (dy, dx) towards
  each pixel's instance centroid, a foreground-positive pair should satisfy
  ``D_p - D_q = q - p`` (both point at the same centroid) and a
  background-positive pair ``D_p = D_q``::

      L_dp_fg = sum_fg-pairs sum_(dy,dx) |D_p - D_q - (q - p)| / (2 N_fg + 1e-5)
      L_dp_bg = sum_bg-pairs sum_(dy,dx) |D_p - D_q|           / (2 N_bg + 1e-5)

  (the 2 counts the two channels: each is the mean L1 per channel and pair).
- Total (``train_irn.py``): ``(pos + neg) / 2 + (dp_fg + dp_bg) / 2`` with
  ``pos = pos_bg / 2 + pos_fg / 2``, i.e. the affinity loss's total plus
  ``(dp_fg + dp_bg) / 2``.

irn lists each unordered pair once (the taps with dy > 0, or dy = 0 and
dx > 0) and takes as sources only pixels whose every tap is in the map (its
crop ``[:h - 9, 9:w - 9]``). Here every in-map pair counts: the displacement
uses those same forward taps, the affinity term the full symmetric tap set
(each pair twice, the same mean); the pairs near the border that irn's crop
drops are kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import wsss_ext
from python_models._checks import check_float, check_int
from python_models.losses.affinity import affinity_loss
from python_models.pseudo.affinity_pairs import affinity_pair_labels

__all__ = ["IRNET_AFFINITY_WEIGHTS", "displacement_loss", "irnet_losses", "reduce_label_map"]

# irn step/train_irn.py: (bg_pos / 2 + fg_pos / 2 + neg) / 2.
IRNET_AFFINITY_WEIGHTS = (0.25, 0.25, 0.5)


def _field(value: object, name: str) -> Tensor:
    value = check_float(value, name)
    if value.dim() != 4 or value.shape[1] != 2 or value.shape[2] * value.shape[3] == 0:
        raise ValueError(f"{name} must be B x 2 x h x w (dy, dx), got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value.detach()).all()):
        raise ValueError(f"{name} has NaN or infinite values")
    return value


def _pairs(value: object, name: str, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex():
        raise TypeError(f"{name} must be a bool (or 0/1) pair mask, got dtype {value.dtype}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must be B x T x h x w = {' x '.join(map(str, shape))} "
                         f"(taps of wsss_ext.neighbour_offsets(radius)), got shape {tuple(value.shape)}")
    return value


def displacement_loss(displacement: Tensor, fg_pos: Tensor, bg_pos: Tensor, radius: int = 10,
                      eps: float = 1e-5) -> dict[str, Tensor]:
    """IRNet's displacement terms (irn ``to_pair_displacement``, ``dp_fg_loss``, ``dp_bg_loss``).

    Args:
        displacement: B x 2 x h x w field (channel 0 dy, channel 1 dx, in pixels
            of the h x w grid), differentiable.
        fg_pos, bg_pos: B x T x h x w pair masks over the taps of
            ``wsss_ext.neighbour_offsets(radius)`` (:func:`python_models.pseudo.affinity_pair_labels`).
            Only the forward taps (after the centre: dy > 0, or dy = 0 and
            dx > 0; irn's ``search_dst``) inside the map are read, so each
            unordered pair counts once.
        radius: the pairs' radius (irn trains with 10).
        eps: irn's 1e-5 added to the denominators.

    Returns:
        ``{"displacement_fg": L_dp_fg, "displacement_bg": L_dp_bg}``, scalars:
        ``sum |D_p - D_q - (q - p)|`` over foreground pairs and channels divided by
        ``2 N_fg + eps``; ``sum |D_p - D_q|`` over background pairs by ``2 N_bg + eps``.

    Example:
        >>> import torch, wsss_ext
        >>> field = torch.zeros(1, 2, 1, 2)                      # two pixels, one pair (0, 1)
        >>> right = wsss_ext.neighbour_offsets(2).tolist().index([0, 1])
        >>> fg = torch.zeros(1, 9, 1, 2, dtype=torch.bool); fg[0, right, 0, 0] = True
        >>> terms = displacement_loss(field, fg, torch.zeros_like(fg), radius=2, eps=0.0)
        >>> float(terms["displacement_fg"])                      # |0 - 0 - (0, 1)| summed = 1, over 2 channels
        0.5
    """
    displacement = _field(displacement, "displacement")
    radius = check_int(radius, "radius", minimum=1)
    offsets = wsss_ext.neighbour_offsets(radius)
    batch, _, height, width = displacement.shape
    shape = (batch, len(offsets), height, width)
    fg_pos, bg_pos = _pairs(fg_pos, "fg_pos", shape), _pairs(bg_pos, "bg_pos", shape)
    centre = len(offsets) // 2
    forward = offsets[centre + 1:]
    extent = radius - 1
    device = displacement.device
    # One gather of D at q = p + o for every forward tap o, from a zero-padded copy.
    padded = F.pad(displacement, (extent, extent, extent, extent)).flatten(2)
    dy, dx = forward[:, 0].to(device).view(-1, 1, 1), forward[:, 1].to(device).view(-1, 1, 1)
    rows = torch.arange(height, device=device).view(1, -1, 1) + dy
    cols = torch.arange(width, device=device).view(1, 1, -1) + dx
    index = (rows + extent) * (width + 2 * extent) + (cols + extent)              # T' x h x w
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    shifted = padded[:, :, index.flatten()].view(batch, 2, *index.shape)
    pair = displacement.unsqueeze(2) - shifted                                   # B x 2 x T' x h x w: D_p - D_q
    target = forward.t().to(device=device, dtype=pair.dtype).view(1, 2, -1, 1, 1)  # q - p = (dy, dx)
    zero = torch.zeros((), dtype=pair.dtype, device=pair.device)
    terms = {}
    for name, mask, error in (("displacement_fg", fg_pos, (pair - target).abs()), ("displacement_bg", bg_pos, pair.abs())):
        selected = (mask[:, centre + 1:].to(pair.device) != 0) & inside
        picked = torch.where(selected.unsqueeze(1), error, zero)
        terms[name] = picked.sum() / (2 * selected.sum().to(pair.dtype) + eps)
    return terms


def reduce_label_map(label_map: Tensor, size: tuple[int, int]) -> Tensor:
    """A B x H x W label map at ``size`` by nearest sampling at the cell centres,
    as irn's ``imutils.pil_rescale(label, 0.25, order=0)`` (PIL's NEAREST)
    brings the IR labels to the boundary map's stride 4.

    Example:
        >>> import torch
        >>> reduce_label_map(torch.arange(16).view(1, 4, 4), (2, 2))
        tensor([[[ 5,  7],
                 [13, 15]]])
    """
    if not isinstance(label_map, Tensor) or label_map.dim() != 3:
        raise ValueError("label_map must be a B x H x W tensor")
    if label_map.dtype.is_floating_point:
        raise TypeError(f"label_map must be an integer label map, got dtype {label_map.dtype}")
    size = tuple(check_int(s, "size[]", minimum=1) for s in size)
    reduced = F.interpolate(label_map[:, None].double(), size=size, mode="nearest-exact")
    return reduced[:, 0].to(label_map.dtype)


def irnet_losses(boundary: Tensor, displacement: Tensor, ir_labels: Tensor, radius: int = 10,
                 ignore_index: int = 255) -> dict[str, Tensor]:
    """IRNet's training loss from its two outputs and the IR labels.

    Args:
        boundary: B x 1 x h x w boundary probabilities (sigmoid of the edge branch).
        displacement: B x 2 x h x w field (dy, dx).
        ir_labels: B x h x w int64 IR labels at the same h x w (0 background,
            c + 1 for class c, ``ignore_index`` unsure).
        radius: pair radius (irn: 10).

    Returns:
        ``{"bg_pos", "fg_pos", "neg"}`` (affinity terms, weights 1/4, 1/4, 1/2),
        ``"affinity"`` (their weighted sum), ``"displacement_fg"``,
        ``"displacement_bg"`` and ``"loss" = affinity + (displacement_fg + displacement_bg) / 2``.
    """
    if not isinstance(boundary, Tensor) or boundary.dim() != 4 or boundary.shape[1] != 1:
        shape = tuple(boundary.shape) if isinstance(boundary, Tensor) else type(boundary).__name__
        raise ValueError(f"boundary must be B x 1 x h x w, got {shape}")
    displacement = _field(displacement, "displacement")
    if displacement.shape[0] != boundary.shape[0] or displacement.shape[-2:] != boundary.shape[-2:]:
        raise ValueError(f"displacement {tuple(displacement.shape)} must match boundary {tuple(boundary.shape)} "
                         "in batch and size")
    if not isinstance(ir_labels, Tensor) or tuple(ir_labels.shape) != (boundary.shape[0], *boundary.shape[-2:]):
        shape = tuple(ir_labels.shape) if isinstance(ir_labels, Tensor) else type(ir_labels).__name__
        raise ValueError(f"ir_labels must be B x h x w = {boundary.shape[0]} x {boundary.shape[2]} x "
                         f"{boundary.shape[3]} (the boundary map's size, stride 4), got {shape}")
    bg_pos, fg_pos, neg = affinity_pair_labels(ir_labels, radius, ignore_index)
    terms = affinity_loss(wsss_ext.boundary_affinity(boundary, radius), bg_pos, fg_pos, neg, IRNET_AFFINITY_WEIGHTS)
    terms["affinity"] = terms.pop("loss")
    terms.update(displacement_loss(displacement, fg_pos, bg_pos, radius))
    terms["loss"] = terms["affinity"] + (terms["displacement_fg"] + terms["displacement_bg"]) / 2
    return terms
