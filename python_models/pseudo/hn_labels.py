"""HN-labels (Lahoud & Ghanem, "RGB-based Semantic Segmentation Using
Self-Supervised Depth Pre-Training", 2020): per-pixel labels made from a
depth map alone, the binned height of each point above the floor and the
binned angle between its surface normal and the up direction.

The pipeline (each step a function):

1. :func:`backproject`: depth + pinhole intrinsics -> a point map in camera
   coordinates (OpenCV axes: x right, y down, z forward; pixel centres at
   integer coordinates).
2. :func:`surface_normals`: the cross product of the point map's central
   differences (one-sided at the borders), unit length, turned to face the camera.
3. :func:`fit_floor`: the floor plane. Gravity is assumed to point roughly
   along the camera's +y, so the prior up direction is the camera's -y
   (``up``); the floor is searched among the lowest points along that prior
   (``floor_quantile`` of the valid points whose normal is within
   ``max_tilt`` of it, so walls are no candidates) by RANSAC over planes whose
   normal lies within ``max_tilt`` degrees of the prior up (3-point
   hypotheses, inliers within ``inlier_threshold`` metres), then refined by
   least squares (the smallest principal axis of the inliers). Its unit
   normal, oriented up, is the estimated up direction (minus gravity), so a
   tilted camera is handled. Without a hypothesis inside the tilt limit the
   least-squares plane of all candidates is used.
4. :func:`height_and_angle`: signed height above that plane and the angle in
   degrees between each normal and the plane's up normal (0 floor and table
   tops, 90 walls, 180 ceilings).
5. :func:`hn_labels`: ``label = height_bin * normal_bins + normal_bin``;
   heights in ``bin_height`` steps from the floor (below-floor noise in bin 0,
   the last bin open), angles in ``normal_bins`` equal steps over [0, 180].
   Pixels without a valid depth or normal get ``ignore_index``.

The paper's bin counts and plane-fitting details were not verified (no code
was read): the defaults here, 6 height bins of 0.5 m and 3 angle bins of 60
degrees (18 labels), RANSAC with 5 cm inliers, are this library's choice.
A flat floor maps to one label (0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from python_models._checks import check_int, check_real

__all__ = [
    "HN_BIN_HEIGHT",
    "HN_HEIGHT_BINS",
    "HN_NORMAL_BINS",
    "backproject",
    "fit_floor",
    "height_and_angle",
    "hn_labels",
    "surface_normals",
]

HN_HEIGHT_BINS = 6  # this library's choice (the paper's count unverified)
HN_NORMAL_BINS = 3  # up-facing, vertical, down-facing (unverified)
HN_BIN_HEIGHT = 0.5  # metres (unverified)

_CAMERA_UP = (0.0, -1.0, 0.0)  # OpenCV camera axes: y points down the image


def _depth(depth: object) -> Tensor:
    if not isinstance(depth, Tensor):
        raise TypeError(f"depth must be a torch.Tensor, got {type(depth).__name__}")
    if not depth.dtype.is_floating_point:
        raise TypeError(f"depth must be a float tensor (metres), got dtype {depth.dtype}")
    if depth.dim() == 4 and depth.shape[1] == 1:
        depth = depth[:, 0]
    if depth.dim() != 3 or depth.shape[1] < 2 or depth.shape[2] < 2:
        raise ValueError(f"depth must be B x H x W (or B x 1 x H x W) with H, W >= 2, got shape {tuple(depth.shape)}")
    return depth


def _intrinsics(intrinsics: object, batch_size: int, dtype: torch.dtype) -> Tensor:
    if not isinstance(intrinsics, Tensor):
        raise TypeError(f"intrinsics must be a torch.Tensor, got {type(intrinsics).__name__}")
    if intrinsics.is_complex():
        raise TypeError(f"intrinsics must be real, got {intrinsics.dtype}")
    if intrinsics.dim() == 2:
        intrinsics = intrinsics.unsqueeze(0).expand(batch_size, 3, 3) if intrinsics.shape == (3, 3) else intrinsics
    if intrinsics.dim() != 3 or intrinsics.shape != (batch_size, 3, 3):
        raise ValueError(f"intrinsics must be B x 3 x 3 (or 3 x 3) pinhole matrices with B = {batch_size}, "
                         f"got shape {tuple(intrinsics.shape)}")
    intrinsics = intrinsics.to(dtype)
    if not torch.isfinite(intrinsics).all() or (intrinsics[:, 0, 0] <= 0).any() or (intrinsics[:, 1, 1] <= 0).any():
        raise ValueError("intrinsics must be finite with fx, fy > 0")
    return intrinsics


def backproject(depth: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Point map of a depth map: ``(points B x 3 x H x W, valid B x H x W bool)``.

    ``depth`` B x H x W metres along the optical axis (0, negative or
    non-finite = missing); ``intrinsics`` B x 3 x 3 or 3 x 3, ``[[fx, s, cx],
    [0, fy, cy], [0, 0, 1]]``. Each point is ``z K^-1 [u, v, 1]`` for the pixel
    (u, v) = (column, row). Missing pixels get the point 0.
    """
    depth = _depth(depth)
    b, h, w = depth.shape
    k = _intrinsics(intrinsics, b, depth.dtype)
    valid = torch.isfinite(depth) & (depth > 0)
    z = torch.where(valid, depth, torch.zeros_like(depth))
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype, device=depth.device),
                          torch.arange(w, dtype=depth.dtype, device=depth.device), indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], 0).reshape(3, -1)  # 3 x HW
    rays = torch.linalg.solve(k, pixels.unsqueeze(0).expand(b, 3, h * w))  # B x 3 x HW
    return rays.view(b, 3, h, w) * z.unsqueeze(1), valid


def surface_normals(points: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Unit normals of a point map: ``(normals B x 3 x H x W, valid B x H x W)``.

    n = (P(x+1) - P(x-1)) x (P(y+1) - P(y-1)) (one-sided differences at the
    borders), normalised and flipped to face the camera (n . P <= 0). A normal is
    valid where the point and its four neighbours are valid and n is not degenerate.
    """
    pad_p = torch.nn.functional.pad(points, (1, 1, 1, 1), mode="replicate")
    pad_v = torch.nn.functional.pad(valid.unsqueeze(1).float(), (1, 1, 1, 1), mode="replicate")[:, 0] > 0
    dx = pad_p[:, :, 1:-1, 2:] - pad_p[:, :, 1:-1, :-2]
    dy = pad_p[:, :, 2:, 1:-1] - pad_p[:, :, :-2, 1:-1]
    normals = torch.linalg.cross(dx, dy, dim=1)
    length = normals.norm(dim=1)
    ok = valid & pad_v[:, 1:-1, 2:] & pad_v[:, 1:-1, :-2] & pad_v[:, 2:, 1:-1] & pad_v[:, :-2, 1:-1]
    ok = ok & (length > 1e-12)
    normals = normals / length.clamp_min(1e-12).unsqueeze(1)
    facing = (normals * points).sum(1, keepdim=True) > 0
    normals = torch.where(facing, -normals, normals)
    return normals * ok.unsqueeze(1), ok


def _plane_least_squares(points: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    """The least-squares plane of M x 3 points: unit normal oriented along ``up`` and offset d (n . p + d = 0)."""
    centre = points.mean(0)
    _, _, vh = torch.linalg.svd(points - centre, full_matrices=False)
    normal = vh[-1]
    normal = -normal if float(normal @ up) < 0 else normal
    return normal, -(normal @ centre)


def fit_floor(points: Tensor, valid: Tensor, normals: Tensor | None = None, *, up: tuple[float, float, float] = _CAMERA_UP,
              floor_quantile: float = 0.3, inlier_threshold: float = 0.05, max_tilt: float = 45.0,
              iterations: int = 200, max_candidates: int = 4096,
              generator: torch.Generator | None = None) -> Tensor:
    """The floor plane of each point map: B x 4 ``(nx, ny, nz, d)`` with a unit
    normal n pointing up and n . p + d = height of p above the floor.

    Candidates: the valid points (with ``normals`` B x 3 x H x W given, only
    those whose normal lies within ``max_tilt`` of the prior up, so walls
    cannot pull the plane) whose height along the prior ``up`` is in the
    lowest ``floor_quantile`` (at most ``max_candidates``, drawn with
    ``generator``). RANSAC (``iterations`` 3-point hypotheses, normals within
    ``max_tilt`` degrees of ``up``, inliers within ``inlier_threshold``) then
    least squares on the best hypothesis's inliers. See the module docstring.

    Raises:
        ValueError: an image with fewer than 3 valid points, bad settings.
    """
    floor_quantile = check_real(floor_quantile, "floor_quantile")
    if not 0 < floor_quantile <= 1:
        raise ValueError(f"floor_quantile must be in (0, 1], got {floor_quantile}")
    inlier_threshold = check_real(inlier_threshold, "inlier_threshold", positive=True)
    max_tilt = check_real(max_tilt, "max_tilt", positive=True)
    iterations = check_int(iterations, "iterations", minimum=1)
    max_candidates = check_int(max_candidates, "max_candidates", minimum=3)
    prior = torch.tensor(up, dtype=points.dtype, device=points.device)
    if prior.shape != (3,) or float(prior.norm()) == 0:
        raise ValueError(f"up must be a non-zero 3-vector, got {up}")
    prior = prior / prior.norm()
    cos_tilt = math.cos(math.radians(max_tilt))
    planes = []
    for b in range(points.shape[0]):
        flat = points[b].reshape(3, -1).T
        usable_points = valid[b].reshape(-1)
        if normals is not None:
            facing_up = (normals[b].reshape(3, -1).T @ prior >= cos_tilt) & usable_points
            usable_points = facing_up if int(facing_up.sum()) >= 3 else usable_points
        cloud = flat[usable_points]
        if cloud.shape[0] < 3:
            raise ValueError(f"depth of image {b} has fewer than 3 valid pixels: no floor to fit")
        heights = cloud @ prior
        count = max(3, math.ceil((floor_quantile * cloud.shape[0])))
        candidates = cloud[heights.argsort()[:count]]
        if candidates.shape[0] > max_candidates:
            candidates = candidates[torch.randperm(candidates.shape[0], generator=generator)[:max_candidates]]
        picks = torch.randint(candidates.shape[0], (iterations, 3), generator=generator).to(points.device)
        p0, p1, p2 = candidates[picks[:, 0]], candidates[picks[:, 1]], candidates[picks[:, 2]]
        normals = torch.linalg.cross(p1 - p0, p2 - p0, dim=1)
        length = normals.norm(dim=1, keepdim=True)
        normals = normals / length.clamp_min(1e-12)
        normals = torch.where((normals @ prior).unsqueeze(1) < 0, -normals, normals)
        usable = (length[:, 0] > 1e-12) & (normals @ prior >= cos_tilt)
        if bool(usable.any()):
            offsets = -(normals * p0).sum(1)
            inliers = ((candidates @ normals.T + offsets).abs() <= inlier_threshold)  # M x K
            score = torch.where(usable, inliers.sum(0), torch.full_like(inliers.sum(0), -1))
            members = candidates[inliers[:, int(score.argmax())]]
        else:
            members = candidates
        normal, offset = _plane_least_squares(members, prior)
        planes.append(torch.cat([normal, offset.view(1)]))
    return torch.stack(planes)


def height_and_angle(depth: Tensor, intrinsics: Tensor, **floor_options) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(height, angle, valid, floor)``: height above the floor (metres, B x H x W),
    the angle in degrees between each surface normal and the floor's up
    normal (B x H x W, in [0, 180]), where both are defined (B x H x W bool),
    and the floor planes (B x 4, :func:`fit_floor` with ``floor_options``)."""
    points, valid = backproject(depth, intrinsics)
    normals, normal_valid = surface_normals(points, valid)
    floor = fit_floor(points, valid, normals * normal_valid.unsqueeze(1), **floor_options)
    up, offset = floor[:, :3], floor[:, 3]
    height = torch.einsum("bchw,bc->bhw", points, up) + offset.view(-1, 1, 1)
    cosine = torch.einsum("bchw,bc->bhw", normals, up).clamp(-1, 1)
    angle = torch.rad2deg(torch.acos(cosine))
    return height, angle, valid & normal_valid, floor


def hn_labels(depth: Tensor, intrinsics: Tensor, *, height_bins: int = HN_HEIGHT_BINS,
              normal_bins: int = HN_NORMAL_BINS, bin_height: float = HN_BIN_HEIGHT, ignore_index: int = 255,
              **floor_options) -> Tensor:
    """HN-labels of depth maps: B x H x W int64 in [0, height_bins * normal_bins) or ``ignore_index``.

    ``label = min(floor(max(height, 0) / bin_height), height_bins - 1) * normal_bins
    + min(floor(angle / (180 / normal_bins)), normal_bins - 1)``, with the height
    and angle of :func:`height_and_angle` (``floor_options`` go to :func:`fit_floor`:
    ``up``, ``floor_quantile``, ``inlier_threshold``, ``max_tilt``, ``iterations``,
    ``max_candidates``, ``generator``). Deterministic for a seeded ``generator``.

    Example: a camera 1.5 m above an empty floor sees a single label.

    >>> k = torch.tensor([[8.0, 0, 7.5], [0, 8.0, 7.5], [0, 0, 1]])
    >>> rows = torch.arange(16.0).view(16, 1).expand(16, 16)
    >>> depth = torch.where(rows > 8, 1.5 * 8.0 / (rows - 7.5).clamp(min=1e-3), torch.zeros(16, 16))
    >>> labels = hn_labels(depth.unsqueeze(0), k)
    >>> labels[0, 10:].unique().tolist(), labels[0, 0, 0].item()  # row 9 borders the missing sky
    ([0], 255)
    """
    height_bins = check_int(height_bins, "height_bins", minimum=1)
    normal_bins = check_int(normal_bins, "normal_bins", minimum=1)
    bin_height = check_real(bin_height, "bin_height", positive=True)
    ignore_index = check_int(ignore_index, "ignore_index")
    if 0 <= ignore_index < height_bins * normal_bins:
        raise ValueError(f"ignore_index {ignore_index} collides with a label in [0, {height_bins * normal_bins})")
    height, angle, valid, _ = height_and_angle(depth, intrinsics, **floor_options)
    h_bin = (height.clamp_min(0) / bin_height).floor().clamp(max=height_bins - 1).long()
    n_bin = (angle / (180.0 / normal_bins)).floor().clamp(0, normal_bins - 1).long()
    labels = h_bin * normal_bins + n_bin
    return torch.where(valid, labels, torch.full_like(labels, ignore_index))
