"""Leopart's spatial swapped-prediction loss (Ziegler & Asano, CVPR 2022;
MkuuWaUjinga/leopart ``src/leopart.py``, ``Leopart.spatial_loss``).

The teacher's Sinkhorn codes of each global crop's patch tokens and the
student's prototype scores of every other crop are both RoIAligned (7 x 7,
``aligned=True``) onto the two crops' intersection; the loss is the
cross-entropy ``-Σ_k q log softmax(p / τ)`` of the aligned maps, averaged over
the aligned cells (only those inside the teacher's attention foreground when a
mask is given), over the V - 1 other crops, and over the global crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from python_models._checks import check_float, check_int, check_real
from python_models.pseudo.leopart import roi_align

__all__ = ["MASK_TOLERANCE", "leopart_spatial_loss"]

# Leopart keeps an aligned cell when the RoIAligned 0/1 mask is >= 1.0, i.e.
# every bilinear sample of the cell is foreground; float rounding of the
# bilinear weights can leave 1 - 1e-7 there, hence the tolerance.
MASK_TOLERANCE = 1e-6


def _maps(value: object, name: str) -> list[Tensor]:
    if not isinstance(value, Sequence) or isinstance(value, (str, Tensor)) or len(value) == 0:
        raise TypeError(f"{name} must be a non-empty sequence of B x K x h x w tensors, got {type(value).__name__}")
    maps = list(value)
    for i, m in enumerate(maps):
        check_float(m, f"{name}[{i}]")
        if m.dim() != 4 or m.shape[:2] != maps[0].shape[:2]:
            raise ValueError(f"{name}[{i}] must be B x K x h x w with the B x K of {name}[0] "
                             f"{tuple(maps[0].shape[:2])}, got shape {tuple(m.shape)}")
        if not torch.isfinite(m).all():
            raise ValueError(f"{name}[{i}] has NaN or infinite values")
    return maps


def leopart_spatial_loss(codes: Sequence[Tensor], scores: Sequence[Tensor], global_boxes: Tensor,
                         crop_boxes: Tensor, temperature: float = 0.1,
                         foreground: Sequence[Tensor] | None = None, output_size: int = 7) -> Tensor:
    """Leopart's loss from teacher codes and student scores on patch grids.

    Args:
        codes: G teacher code maps, each B x K x h_g x w_g (Sinkhorn codes of
            global crop g's patches, rows summing to 1 over K; detached here).
        scores: V student score maps, each B x K x h_v x w_v (prototype
            scores of crop v's patches), the G global crops first, in the
            order of ``codes``.
        global_boxes: B x G x V x 4, the intersection of (g, v) in g's patch
            grid (crop pixels divided by the patch size; Leopart
            ``bboxes["gc"] / patch_size``).
        crop_boxes: B x V x G x 4, the same intersection in v's patch grid
            (``bboxes["all"] / patch_size``).
        temperature: τ of the student's softmax (0.1).
        foreground: G masks B x h_g x w_g (the teacher's attention
            foreground), or None to use every cell (Leopart's ``loss_mask``
            "fg" and "all").
        output_size: RoIAlign's output side (7).

    Returns:
        a scalar.
    """
    codes, scores = _maps(codes, "codes"), _maps(scores, "scores")
    g_count, v_count = len(codes), len(scores)
    if g_count > v_count or v_count < 2:
        raise ValueError(f"need at least 2 crops and no more codes than scores, got {g_count} codes, {v_count} scores")
    b, k = scores[0].shape[:2]
    if codes[0].shape[:2] != (b, k):
        raise ValueError(f"codes are B x K = {tuple(codes[0].shape[:2])} but scores are {(b, k)}")
    for name, boxes, shape in (("global_boxes", global_boxes, (b, g_count, v_count, 4)),
                               ("crop_boxes", crop_boxes, (b, v_count, g_count, 4))):
        if not isinstance(boxes, Tensor) or not boxes.dtype.is_floating_point:
            raise TypeError(f"{name} must be a float tensor B x ... x 4")
        if tuple(boxes.shape) != shape:
            raise ValueError(f"{name} must be {' x '.join(map(str, shape))}, got shape {tuple(boxes.shape)}")
    temperature = check_real(temperature, "temperature", positive=True)
    output_size = check_int(output_size, "output_size", minimum=1)
    if foreground is not None:
        if not isinstance(foreground, Sequence) or len(foreground) != g_count:
            raise ValueError(f"foreground must hold one B x h x w mask per global crop ({g_count})")
        for g, mask in enumerate(foreground):
            if not isinstance(mask, Tensor) or tuple(mask.shape) != (b, *codes[g].shape[2:]):
                raise ValueError(f"foreground[{g}] must be B x h x w = {(b, *codes[g].shape[2:])}")
    total = scores[0].new_zeros(())
    for g in range(g_count):
        boxes = list(global_boxes[:, g].to(codes[g].dtype).unbind(0))  # B tensors V x 4
        aligned_codes = roi_align(codes[g].detach(), boxes, output_size, aligned=True)
        aligned_codes = aligned_codes.view(b, v_count, k, output_size, output_size)
        aligned_mask = None
        if foreground is not None:
            mask = foreground[g].detach().to(codes[g].dtype)[:, None]
            aligned_mask = roi_align(mask, boxes, output_size, aligned=True)
            aligned_mask = (aligned_mask >= 1.0 - MASK_TOLERANCE).view(b, v_count, output_size, output_size)
        subloss = total.new_zeros(())
        for v in range(v_count):
            if v == g:
                continue
            view_boxes = list(crop_boxes[:, v, g].to(scores[v].dtype)[:, None].unbind(0))  # B tensors 1 x 4
            aligned = roi_align(scores[v], view_boxes, output_size, aligned=True)
            cross_entropy = -(aligned_codes[:, v] * F.log_softmax(aligned / temperature, dim=1)).sum(1)
            if aligned_mask is None:
                subloss = subloss + cross_entropy.mean()
            else:
                weight = aligned_mask[:, v].to(cross_entropy.dtype)
                if bool(weight.sum() > 0):  # Leopart skips a pair without foreground cells
                    subloss = subloss + (cross_entropy * weight).sum() / weight.sum()
        total = total + subloss / (v_count - 1)
    return total / g_count
