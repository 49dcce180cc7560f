"""Dense CRF mean-field with exact Gaussian filtering: the O(N^2) oracle.

Builds every kernel matrix ``K_ij = exp(-|f_i - f_j|^2 / 2)`` explicitly (a
pixel's own term included), normalises it symmetrically and runs the same
update as ``wsss_ext.dense_crf`` and pydensecrf. Only for small images: a
64 x 64 image needs two 4096 x 4096 matrices.
"""

from __future__ import annotations

import torch
from torch import Tensor


def crf_features(image: Tensor, sxy: float, srgb: float | None = None) -> Tensor:
    """Per-pixel features of one ``[3, H, W]`` image, pixels row-major: ``(x, y) / sxy``
    (x the column, y the row, not centred), then ``(r, g, b) / srgb`` if srgb is given."""
    _, height, width = image.shape
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    columns = [x.reshape(-1) / sxy, y.reshape(-1) / sxy]
    if srgb is not None:
        columns += [image[c].reshape(-1).double() / srgb for c in range(3)]
    return torch.stack(columns, dim=1).double()


def normalised_kernel(features: Tensor) -> Tensor:
    """``D^-1/2 K D^-1/2`` with ``K = exp(-|f_i - f_j|^2 / 2)`` and ``D = K 1``."""
    kernel = torch.exp(-0.5 * torch.cdist(features, features).square())
    norm = kernel.sum(1).rsqrt()
    return norm[:, None] * kernel * norm[None, :]


def dense_crf_dense(
    unary: Tensor,
    image: Tensor,
    n_iters: int = 10,
    *,
    gaussian_sxy: float = 3.0,
    gaussian_weight: float = 3.0,
    bilateral_sxy: float = 80.0,
    bilateral_srgb: float = 13.0,
    bilateral_weight: float = 10.0,
) -> Tensor:
    """Mean-field on ``unary [B, L, H, W]`` and ``image [B, 3, H, W]`` uint8, in float64
    with exact kernels. Returns ``Q`` ``[B, L, H, W]`` float64."""
    batch, n_labels, height, width = unary.shape
    out = []
    for b in range(batch):
        energies = unary[b].reshape(n_labels, -1).T.double()  # N x L
        image_b = image[b].cpu()
        kernels = [
            (gaussian_weight, normalised_kernel(crf_features(image_b, gaussian_sxy))),
            (bilateral_weight, normalised_kernel(crf_features(image_b, bilateral_sxy, bilateral_srgb))),
        ]
        q = torch.softmax(-energies, dim=1)
        for _ in range(n_iters):
            pairwise = sum(weight * (kernel.to(q.device) @ q) for weight, kernel in kernels)
            q = torch.softmax(-energies + pairwise, dim=1)
        out.append(q.T.reshape(n_labels, height, width))
    return torch.stack(out)
