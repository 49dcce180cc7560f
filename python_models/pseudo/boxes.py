"""Box-supervised label rules of Simple Does It (Khoreva et al., "Simple Does It:
Weakly Supervised Instance and Semantic Segmentation", CVPR 2017, Sec. 3.1).

The paper trains a segmentation network recursively: round 1 on labels drawn
from the boxes (Box: each box filled with its class; Box^i: only an inner
region filled, the ring around it ignored), each later round on the previous
network's output post-processed by

- C1 box enforcing: a pixel outside the box annotations is background;
- C2 outliers reset: a box whose segment has IoU < 50 % with it is reset to
  its initial label (the one fed in round 1);
- C3 the dense CRF (DeepLab-v1's parameters), for image boundaries.

Conventions shared by every function here:

- ``boxes``: B x N x 4 float, ``(x0, y0, x1, y1)`` in pixels with exclusive
  ends; pixel ``(y, x)`` lies in a box when its centre ``(x + 0.5, y + 0.5)``
  does (so an integer box covers columns ``x0 .. x1 - 1``). Each real box must
  lie in the image: ``0 <= x0 < x1 <= W``, ``0 <= y0 < y1 <= H``.
- ``box_classes``: B x N int64 tag columns, ``-1`` for padding rows (their
  coordinates are not read).
- Label maps: B x H x W int64, 0 background, ``c + 1`` for tag column ``c``,
  255 ignored.
- Overlapping boxes: the smaller box is drawn on top (equal areas: the later
  row on top); the paper does not say, and a smaller box inside a larger one
  is usually the occluding object.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from python_models._checks import check_images, check_int, check_label_map, check_real
from python_models.pseudo.crf import crf_labels, tag_unary_from_labels, tag_unary_from_probs

__all__ = [
    "BOX_INNER_RATIO",
    "BOX_MIN_IOU",
    "DEEPLAB_LARGEFOV_CRF",
    "box_masks",
    "box_pseudo_labels",
    "box_rules",
    "box_tags",
    "boxes_to_labels",
    "check_boxes",
    "refine_box_labels",
]

# Simple Does It, Sec. 3.1 "Box^i": the inner 20 % of the box area is the object, the rest of the box ignored.
BOX_INNER_RATIO = 0.2
# Simple Does It, Sec. 3.1 "Outliers reset": "e.g. IoU < 50%".
BOX_MIN_IOU = 0.5
# "DenseCRF with the DeepLabv1 parameters": DeepLab-CRF-LargeFOV (deeplab-public run_densecrf.sh, "FOV"):
# bi_w 4, bi_xy_std 121, bi_rgb_std 5, pos_w 3, pos_xy_std 3, 10 iterations.
DEEPLAB_LARGEFOV_CRF = dict(n_iters=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=121.0,
                            bilateral_srgb=5.0, bilateral_weight=4.0)


def check_boxes(boxes: object, box_classes: object, size: tuple[int, int], num_classes: int | None = None,
                batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Checks boxes and their classes; returns ``(boxes float, box_classes int64)``.

    Raises:
        TypeError: ``boxes`` not a float tensor, ``box_classes`` not an integer one.
        ValueError: wrong shapes, a batch other than ``batch_size``, a real box
            outside the ``size = (H, W)`` image or empty (``x1 <= x0``), non-finite
            coordinates, a class below -1 or ``>= num_classes``.
    """
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a torch.Tensor (B x N x 4), got {type(boxes).__name__}")
    if not isinstance(box_classes, Tensor):
        raise TypeError(f"box_classes must be a torch.Tensor (B x N), got {type(box_classes).__name__}")
    if not boxes.dtype.is_floating_point:
        raise TypeError(f"boxes must be a float tensor of pixel coordinates, got dtype {boxes.dtype}")
    if box_classes.dtype.is_floating_point or box_classes.dtype == torch.bool or box_classes.is_complex():
        raise TypeError(f"box_classes must be an integer tensor (tag columns, -1 padding), "
                        f"got dtype {box_classes.dtype}")
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be B x N x 4 (x0, y0, x1, y1), got shape {tuple(boxes.shape)}")
    if box_classes.shape != boxes.shape[:2]:
        raise ValueError(f"box_classes must be B x N = {tuple(boxes.shape[:2])} (one per box), "
                         f"got shape {tuple(box_classes.shape)}")
    if batch_size is not None and boxes.shape[0] != batch_size:
        raise ValueError(f"boxes has batch {boxes.shape[0]}, but the images/labels have {batch_size}")
    height, width = size
    box_classes = box_classes.long()
    if (box_classes < -1).any():
        raise ValueError("box_classes must be tag columns >= 0, or -1 for padding")
    if num_classes is not None and (box_classes >= num_classes).any():
        raise ValueError(f"box_classes must be < num_classes = {num_classes}, got {int(box_classes.max())}")
    real = box_classes >= 0
    coords = boxes[real]
    if coords.numel():
        if not torch.isfinite(coords).all():
            raise ValueError("boxes has NaN or infinite coordinates")
        x0, y0, x1, y1 = coords.unbind(-1)
        inside = (x0 >= 0) & (y0 >= 0) & (x1 <= width) & (y1 <= height) & (x1 > x0) & (y1 > y0)
        if not inside.all():
            bad = coords[~inside][0].tolist()
            raise ValueError(f"boxes must satisfy 0 <= x0 < x1 <= W = {width} and 0 <= y0 < y1 <= H = {height}; "
                             f"got {bad}")
    return boxes, box_classes


def _centre_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """B x N x H x W: pixel centres inside each box (any box, padding included)."""
    height, width = size
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5
    x0, y0, x1, y1 = (boxes[..., k, None] for k in range(4))
    in_x = (xs >= x0) & (xs < x1)  # B x N x W
    in_y = (ys >= y0) & (ys < y1)  # B x N x H
    return in_y[..., :, None] & in_x[..., None, :]


def box_masks(boxes: Tensor, box_classes: Tensor, size: tuple[int, int], inner_ratio: float | None = None) -> Tensor:
    """B x N x H x W bool: the pixels of each box (padding rows all False).

    With ``inner_ratio`` r, the centred inner box of the same aspect ratio
    whose area is r times the box's (each side scaled by sqrt(r)).

    >>> m = box_masks(torch.tensor([[[0., 0., 10., 10.]]]), torch.tensor([[0]]), (10, 10), inner_ratio=0.36)
    >>> int(m.sum()), m[0, 0, 2:8, 2:8].all().item()
    (36, True)
    """
    boxes, box_classes = check_boxes(boxes, box_classes, size)
    if inner_ratio is not None:
        ratio = check_real(inner_ratio, "inner_ratio")
        if not 0 < ratio <= 1:
            raise ValueError(f"inner_ratio must be in (0, 1], got {ratio}")
        scale = math.sqrt(ratio)
        centre = (boxes[..., :2] + boxes[..., 2:]) / 2
        half = (boxes[..., 2:] - boxes[..., :2]) * (scale / 2)
        boxes = torch.cat([centre - half, centre + half], -1)
    return _centre_masks(boxes, size) & (box_classes >= 0)[..., None, None]


def _draw_order(boxes: Tensor, box_classes: Tensor) -> Tensor:
    """B x N indices: real boxes by decreasing area (ties: lower row first), so
    later ones (smaller) are drawn on top; padding first (never drawn)."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    area = torch.where(box_classes >= 0, area, torch.full_like(area, float("inf")))
    return torch.sort(area, dim=1, descending=True, stable=True).indices


def boxes_to_labels(boxes: Tensor, box_classes: Tensor, size: tuple[int, int], inner_ratio: float | None = None,
                    ignore_index: int = 255) -> Tensor:
    """The initial labels of Simple Does It: "Box" (``inner_ratio=None``) fills
    each box with its class; "Box^i" (``inner_ratio=0.2``, Sec. 3.1) fills only
    the inner box of that share of the area and ignores the ring between.
    Outside every box: background. Smaller boxes are drawn on top.

    Args:
        boxes: B x N x 4 float (x0, y0, x1, y1), exclusive ends.
        box_classes: B x N int64 tag columns, -1 padding.
        size: (H, W) of the label map.

    Returns:
        B x H x W int64: 0, c + 1, or ``ignore_index`` (Box^i rings).

    >>> boxes_to_labels(torch.tensor([[[1., 0., 3., 2.]]]), torch.tensor([[4]]), (2, 4))
    tensor([[[0, 5, 5, 0],
             [0, 5, 5, 0]]])
    """
    boxes, box_classes = check_boxes(boxes, box_classes, size)
    height, width = size
    whole = box_masks(boxes, box_classes, size)
    inner = whole if inner_ratio is None else box_masks(boxes, box_classes, size, inner_ratio)
    labels = torch.zeros(boxes.shape[0], height, width, dtype=torch.long, device=boxes.device)
    order = _draw_order(boxes, box_classes)
    for b in range(boxes.shape[0]):
        for n in order[b].tolist():
            c = int(box_classes[b, n])
            if c < 0:
                continue
            labels[b][whole[b, n]] = ignore_index
            labels[b][inner[b, n]] = c + 1
    return labels


def box_tags(box_classes: Tensor, num_classes: int) -> Tensor:
    """B x C float multi-hot: the classes that have at least one box.

    >>> box_tags(torch.tensor([[2, -1], [0, 2]]), 3)
    tensor([[0., 0., 1.],
            [1., 0., 1.]])
    """
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    if box_classes.dtype.is_floating_point or box_classes.dtype == torch.bool:
        raise TypeError(f"box_classes must be an integer tensor, got dtype {box_classes.dtype}")
    if (box_classes >= num_classes).any() or (box_classes < -1).any():
        raise ValueError(f"box_classes must be in [-1, num_classes = {num_classes})")
    tags = torch.zeros(box_classes.shape[0], num_classes + 1, device=box_classes.device)
    tags.scatter_(1, (box_classes + 1).clamp(min=0), 1.0)  # padding lands in the dropped column 0
    return tags[:, 1:]


def box_rules(label_map: Tensor, boxes: Tensor, box_classes: Tensor, inner_ratio: float | None = None,
              min_iou: float = BOX_MIN_IOU, num_classes: int | None = None, ignore_index: int = 255) -> Tensor:
    """Simple Does It's post-processing rules C1 and C2 (Sec. 3.1) on a label map.

    1. Box enforcing, per class: a pixel labelled ``c + 1`` that lies in no box
       of class ``c`` becomes background (0) -- outside every box that is the
       paper's rule; inside a box of another class it is the same rule read
       per class (that pixel is outside the boxes of its class). Ignored pixels
       outside every box become background too.
    2. Outliers reset: a box whose segment (its class's pixels inside it) has
       IoU < ``min_iou`` with the box, i.e. covers less than ``min_iou`` of its
       pixels, gets its area reset to the initial label
       (:func:`boxes_to_labels` with the same ``inner_ratio``: Box or Box^i).
       A reset can take pixels from an overlapping box, so the check repeats
       until no further box is reset; the result is a fixed point: applying
       the rules again changes nothing.

    Args:
        label_map: B x H x W int64 (0, c + 1, ``ignore_index``).
        boxes, box_classes: B x N x 4 float and B x N int64 (see the module docstring).
        inner_ratio: None for Box, 0.2 for Box^i (the reset's initial label).
        min_iou: the reset threshold (0.5; 0 disables the reset).
        num_classes: if given, labels and box classes are checked against it.

    Returns:
        B x H x W int64; never a class without a box in the image, no
        foreground outside the boxes.

    >>> boxes, classes = torch.tensor([[[0., 0., 2., 2.]]]), torch.tensor([[0]])
    >>> box_rules(torch.tensor([[[1, 0, 1], [0, 0, 1]]]), boxes, classes)   # 1 / 4 < 50 %: reset
    tensor([[[1, 1, 0],
             [1, 1, 0]]])
    """
    if not isinstance(label_map, Tensor):
        raise TypeError(f"label_map must be a torch.Tensor (B x H x W), got {type(label_map).__name__}")
    if label_map.dim() != 3:
        raise ValueError(f"label_map must be B x H x W, got shape {tuple(label_map.shape)}")
    num_labels = ignore_index if num_classes is None else check_int(num_classes, "num_classes", minimum=1) + 1
    label_map = check_label_map(label_map, "label_map", num_labels=num_labels, ignore_index=ignore_index)
    size = tuple(label_map.shape[1:])
    boxes, box_classes = check_boxes(boxes, box_classes, size, num_classes, batch_size=label_map.shape[0])
    min_iou = check_real(min_iou, "min_iou")
    if not 0 <= min_iou <= 1:
        raise ValueError(f"min_iou must be in [0, 1], got {min_iou}")
    boxes, box_classes = boxes.to(label_map.device), box_classes.to(label_map.device)

    inside = box_masks(boxes, box_classes, size)  # B x N x H x W
    target = (box_classes + 1)[..., None, None]  # B x N x 1 x 1 (padding: 0, never matches a foreground pixel)
    # C1: foreground must lie in a box of its own class.
    own_box = ((label_map[:, None] == target) & inside).any(1)
    foreground = (label_map > 0) & (label_map != ignore_index)
    in_any = inside.any(1)
    result = torch.where((foreground & ~own_box) | ((label_map == ignore_index) & ~in_any),
                         torch.zeros_like(label_map), label_map)
    if min_iou == 0:
        return result

    # C2: reset boxes whose segment covers too little of them, until none is left.
    initial = boxes_to_labels(boxes, box_classes, size, inner_ratio, ignore_index)
    area = inside.sum((2, 3))
    done = torch.zeros_like(box_classes, dtype=torch.bool)
    while True:
        covered = ((result[:, None] == target) & inside).sum((2, 3))
        outlier = (box_classes >= 0) & (area > 0) & (covered < min_iou * area) & ~done
        if not outlier.any():
            return result
        done |= outlier
        region = (inside & outlier[..., None, None]).any(1)
        result = torch.where(region, initial, result)


def refine_box_labels(images: Tensor, label_map: Tensor, boxes: Tensor, box_classes: Tensor, num_classes: int,
                      n_rounds: int = 1, crf: Mapping | None = None, gt_prob: float = 0.7,
                      inner_ratio: float | None = None, min_iou: float = BOX_MIN_IOU,
                      ignore_index: int = 255) -> Tensor:
    """``n_rounds`` of "dense CRF, then :func:`box_rules`" on a label map.

    Each round: ``tag_unary_from_labels(labels, box tags, gt_prob)`` (pydensecrf's
    ``unary_from_labels`` over the background and the classes with a box; ignored
    pixels uniform), ``wsss_ext.dense_crf`` with ``crf`` (default
    :data:`DEEPLAB_LARGEFOV_CRF`, the paper's "DeepLabv1 parameters"), argmax,
    then the box rules. ``gt_prob`` 0.7 is IRNet's choice (the paper runs the CRF
    on network probabilities, see :func:`box_pseudo_labels`).

    Args:
        images: B x 3 x H x W float RGB in [0, 1].
        label_map: B x H x W int64 labels (e.g. :func:`boxes_to_labels`).
        boxes, box_classes: B x N x 4 float, B x N int64.
        num_classes: C (label values up to C, box classes below C).

    Returns:
        B x H x W int64.
    """
    images = check_images(images)
    n_rounds = check_int(n_rounds, "n_rounds", minimum=0)
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    label_map = check_label_map(label_map, "label_map", num_labels=num_classes + 1, ignore_index=ignore_index,
                                shape=(images.shape[0], *images.shape[2:]))
    boxes, box_classes = check_boxes(boxes, box_classes, tuple(images.shape[2:]), num_classes, images.shape[0])
    tags = box_tags(box_classes, num_classes)
    settings = dict(DEEPLAB_LARGEFOV_CRF if crf is None else crf)
    for _ in range(n_rounds):
        unary = tag_unary_from_labels(label_map, tags, gt_prob, ignore_index)
        label_map = box_rules(crf_labels(images, unary, **settings), boxes, box_classes, inner_ratio, min_iou,
                              num_classes, ignore_index)
    return label_map


def box_pseudo_labels(images: Tensor, probs: Tensor, boxes: Tensor, box_classes: Tensor,
                      crf: Mapping | None = None, inner_ratio: float | None = None, min_iou: float = BOX_MIN_IOU,
                      ignore_index: int = 255) -> Tensor:
    """The next round's labels from a network's output (Simple Does It, Sec. 3.1):
    ``dense_crf`` of ``-log probs`` over the background and the classes with a
    box (``tag_unary_from_probs``), argmax, then :func:`box_rules`.

    The paper lists the CRF after the two rules; here the rules run after it,
    so the labels handed to the next round satisfy them (the CRF can move
    foreground out of a box).

    Args:
        images: B x 3 x H x W float RGB in [0, 1].
        probs: B x (1 + C) x H x W probabilities, background first, at the images' size.
        boxes, box_classes: B x N x 4 float, B x N int64.

    Returns:
        B x H x W int64.
    """
    images = check_images(images)
    if not isinstance(probs, Tensor) or probs.dim() != 4 or probs.shape[0] != images.shape[0] \
            or probs.shape[2:] != images.shape[2:] or probs.shape[1] < 2:
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise ValueError(f"probs must be B x (1 + C) x H x W at the images' size {tuple(images.shape[2:])}, "
                         f"got {shape}")
    num_classes = probs.shape[1] - 1
    boxes, box_classes = check_boxes(boxes, box_classes, tuple(images.shape[2:]), num_classes, images.shape[0])
    settings = dict(DEEPLAB_LARGEFOV_CRF if crf is None else crf)
    unary = tag_unary_from_probs(probs, box_tags(box_classes, num_classes).to(probs.device))
    return box_rules(crf_labels(images, unary, **settings), boxes, box_classes, inner_ratio, min_iou,
                     num_classes, ignore_index)
