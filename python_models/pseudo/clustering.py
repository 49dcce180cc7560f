"""Cluster pseudo-labels of self-supervised methods, as plain functions.

- SeLa (Asano et al., ICLR 2020, yukimasano/self-label ``sinkhornknopp.py``):
  :func:`sela_labels`, balanced labels from ``P^lambda`` by Sinkhorn-Knopp,
  then the argmax of the transport plan.
- DeepCluster (Caron et al., ECCV 2018, facebookresearch/deepcluster
  ``clustering.py``, ``util.py``): :func:`pca_whiten` (PCA to 256 dimensions
  with whitening, then L2), :func:`kmeans` (a small torch k-means with no
  empty cluster), :func:`deepcluster_labels` (the two composed) and
  :func:`uniform_cluster_sampler` (every non-empty cluster sampled equally).

DeepCluster's original k-means is faiss's; this torch one follows the same
rules (random data points as initial centroids, squared-L2 assignment, mean
update, a fixed number of iterations) and handles empty clusters by moving a
point into them (faiss splits a large cluster's centroid instead). k-means is
outside wsss_ext's kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import wsss_ext
from python_models._checks import check_int, check_real

__all__ = [
    "DEEPCLUSTER_KMEANS_ITERS",
    "DEEPCLUSTER_PCA_DIM",
    "SELA_LAMBDA",
    "SELA_TOL",
    "deepcluster_labels",
    "kmeans",
    "pca_whiten",
    "sela_labels",
    "uniform_cluster_sampler",
]

SELA_LAMBDA = 25.0  # self-label main.py --lamb
SELA_TOL = 1e-5  # prototype-marginal error; see sela_labels
DEEPCLUSTER_PCA_DIM = 256  # deepcluster clustering.py preprocess_features(pca=256)
DEEPCLUSTER_KMEANS_ITERS = 20  # clustering.py run_kmeans: clus.niter = 20

_CHUNK_ELEMENTS = 1 << 22  # rows x clusters per chunk of the k-means distance matrix


def check_matrix(value: object, name: str) -> Tensor:
    """An N x D float tensor with N, D >= 1, finite (TypeError / ValueError naming ``name``)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got dtype {value.dtype}")
    if value.dim() != 2 or value.shape[0] == 0 or value.shape[1] == 0:
        raise ValueError(f"{name} must be N x D, got shape {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return value


@torch.no_grad()
def sela_labels(log_probs: Tensor, lamb: float = SELA_LAMBDA, tol: float = SELA_TOL, max_iters: int = 1000,
                process_group=None) -> Tensor:
    r"""SeLa's balanced pseudo-labels of N samples over K clusters.

    SeLa solves :math:`\min_Q -\frac{1}{N}\sum_i \sum_k Q_{ik} \log P_{ik}`
    subject to equal cluster sizes N/K, approximately by Sinkhorn-Knopp on
    :math:`P^\lambda`, and labels each sample by the argmax of the plan
    :math:`\mathrm{diag}(c) P^\lambda \mathrm{diag}(r)`. ``P^λ = exp(log P /
    (1/λ))``, so this is ``wsss_ext.sinkhorn_knopp(log_probs, epsilon=1/λ,
    tol=tol)`` (the plan's row scaling leaves each row's argmax unchanged),
    computed in the log domain: finite for any λ, where SeLa needs float64.

    SeLa stops when :math:`\sum_i |c_i / c^{new}_i - 1| < 0.1` (checked every
    10 iterations), a rule on the change of the scaling vector; here ``tol``
    bounds the prototype-marginal error :math:`\sum_k |\sum_i Q_{ik} - 1/K|`
    (1e-5 by default: SeLa's rule stops near 1e-6 on 100k x 3000 in float64;
    float32 iterates stall near 1.5e-6, pass float64 ``log_probs`` for less).

    Args:
        log_probs: N x K log-probabilities (``log_softmax`` of a head's logits;
            logits give the same labels, the row normalisation absorbs it).
        lamb: λ (SeLa 25), > 0.
        tol, max_iters: the stopping rule above and its cap.
        process_group: a torch.distributed group; each process passes its
            shard of the data set and gets its shard's labels.

    Returns:
        N int64 labels in [0, K).

    Example:
        >>> import torch
        >>> log_p = torch.log_softmax(torch.stack([2 + 0.1 * torch.arange(6.0), torch.zeros(6)], 1), 1)
        >>> log_p.argmax(1).tolist(), sela_labels(log_p).tolist()   # balanced, not collapsed
        ([0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0])
    """
    log_probs = check_matrix(log_probs, "log_probs")
    lamb = check_real(lamb, "lamb", positive=True)
    codes = wsss_ext.sinkhorn_knopp(log_probs.detach(), 1.0 / lamb, 1, tol=tol, max_iters=max_iters,
                                    process_group=process_group)
    return codes.argmax(1)


@torch.no_grad()
def pca_whiten(features: Tensor, dim: int = DEEPCLUSTER_PCA_DIM, eps: float = 1e-6) -> Tensor:
    """DeepCluster's ``preprocess_features``: PCA to ``dim`` dimensions with
    whitening (faiss ``PCAMatrix(d, dim, eigen_power=-0.5)``), then each row
    L2-normalised.

    The projection is ``(x - mean) V diag(lambda^-1/2)`` over the top ``dim``
    eigenvectors of the covariance (computed in float64). Directions whose
    eigenvalue is below ``eps`` times the largest (fewer samples than
    dimensions) are set to 0 instead of being amplified. ``dim`` larger than
    D keeps all D directions.

    Args:
        features: N x D float features.

    Returns:
        N x min(dim, D) float32 (float64 for float64 input), rows of unit norm
        (or zero where a row lies at the mean).
    """
    features = check_matrix(features, "features")
    dim = check_int(dim, "dim", minimum=1)
    out_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    x = features.double()
    x = x - x.mean(0, keepdim=True)
    covariance = x.T @ x / max(x.shape[0], 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    keep = min(dim, x.shape[1])
    eigenvalues, eigenvectors = eigenvalues.flip(0)[:keep], eigenvectors.flip(1)[:, :keep]
    usable = eigenvalues > eps * eigenvalues[0].clamp(min=1e-300)
    scale = torch.where(usable, eigenvalues.clamp(min=1e-300).rsqrt(), torch.zeros_like(eigenvalues))
    whitened = (x @ eigenvectors) * scale
    return F.normalize(whitened, dim=1).to(out_dtype)


def _nearest(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Index of and squared distance to the nearest centroid, in row chunks."""
    rows = max(1, _CHUNK_ELEMENTS // centroids.shape[0])
    norms = (centroids * centroids).sum(1)
    labels, distances = [], []
    for start in range(0, x.shape[0], rows):
        chunk = x[start:start + rows]
        d = (chunk * chunk).sum(1, keepdim=True) - 2 * chunk @ centroids.T + norms
        value, index = d.min(1)
        labels.append(index)
        distances.append(value.clamp(min=0))
    return torch.cat(labels), torch.cat(distances)


def _fill_empty(x: Tensor, labels: Tensor, distances: Tensor, k: int) -> Tensor:
    """Give every empty cluster one point: the point farthest from its centroid
    in the currently largest cluster (which keeps at least one)."""
    counts = torch.bincount(labels, minlength=k)
    empty = (counts == 0).nonzero().flatten().tolist()
    if not empty:
        return labels
    labels, distances = labels.clone(), distances.clone()
    for cluster in empty:
        largest = int(counts.argmax())
        members = (labels == largest).nonzero().flatten()
        moved = members[distances[members].argmax()]
        labels[moved] = cluster
        distances[moved] = 0
        counts[largest] -= 1
        counts[cluster] += 1
    return labels


def _means(x: Tensor, labels: Tensor, k: int) -> Tensor:
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).clamp(min=1).to(x.dtype)
    return sums / counts[:, None]


@torch.no_grad()
def kmeans(features: Tensor, k: int, n_iters: int = DEEPCLUSTER_KMEANS_ITERS,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with squared-L2 distances (faiss ``Clustering`` as
    DeepCluster runs it: ``k`` distinct random points as initial centroids,
    ``n_iters`` assignment + mean updates, then a final assignment).

    No cluster is ever empty: after each assignment, each empty cluster
    receives the point farthest from its centroid in the largest cluster.

    Args:
        features: N x D float features, N >= k.
        k: the number of clusters, >= 1.
        n_iters: iterations (DeepCluster 20), >= 0.
        generator: for the initial centroids.

    Returns:
        ``(centroids, labels)``: k x D centroids (the means of the final
        clusters) and N int64 labels in [0, k), every cluster non-empty.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
        >>> centroids, labels = kmeans(x, 2, generator=torch.Generator().manual_seed(0))
        >>> labels.tolist() in ([0, 0, 1, 1], [1, 1, 0, 0]), sorted(round(c, 2) for c in centroids.flatten().tolist())
        (True, [0.05, 5.1])
    """
    features = check_matrix(features, "features")
    k = check_int(k, "k", minimum=1)
    n_iters = check_int(n_iters, "n_iters", minimum=0)
    n = features.shape[0]
    if n < k:
        raise ValueError(f"features has {n} rows, fewer than k = {k} clusters")
    x = features.float() if features.dtype != torch.float64 else features
    start = torch.randperm(n, generator=generator)[:k].to(x.device)
    centroids = x[start].clone()
    for _ in range(n_iters):
        labels = _fill_empty(x, *_nearest(x, centroids), k)
        centroids = _means(x, labels, k)
    labels = _fill_empty(x, *_nearest(x, centroids), k)
    return _means(x, labels, k), labels


@torch.no_grad()
def deepcluster_labels(features: Tensor, k: int, pca_dim: int = DEEPCLUSTER_PCA_DIM,
                       n_iters: int = DEEPCLUSTER_KMEANS_ITERS, generator: torch.Generator | None = None) -> Tensor:
    """DeepCluster's pseudo-labels: :func:`pca_whiten` (PCA-``pca_dim``,
    whitening, L2) then :func:`kmeans` with ``k`` clusters. Returns N int64
    labels in [0, k), every cluster non-empty (N >= k)."""
    return kmeans(pca_whiten(features, pca_dim), k, n_iters, generator)[1]


def uniform_cluster_sampler(labels: Tensor, num_samples: int | None = None,
                            generator: torch.Generator | None = None) -> Tensor:
    """DeepCluster's ``UnifLabelSampler``: ``num_samples`` indices (default N)
    drawn equally from every non-empty cluster.

    Each non-empty cluster gives ``int(num_samples / n_clusters) + 1``
    indices, without replacement if it has more members than that, with
    replacement otherwise; the union is shuffled and cut to ``num_samples``.

    Args:
        labels: N int64 cluster labels (>= 0).

    Returns:
        ``num_samples`` int64 indices into ``labels``.

    Example:
        >>> import torch
        >>> labels = torch.tensor([0] * 9 + [1])
        >>> picked = uniform_cluster_sampler(labels, 1000, torch.Generator().manual_seed(0))
        >>> 400 < int((labels[picked] == 1).sum()) < 600
        True
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be N int64 cluster labels, got {labels.dtype} of shape {tuple(labels.shape)}")
    if int(labels.min()) < 0:
        raise ValueError("labels must be >= 0")
    labels = labels.long().cpu()
    num_samples = labels.numel() if num_samples is None else check_int(num_samples, "num_samples", minimum=1)
    clusters = labels.unique()
    per_cluster = int(num_samples / clusters.numel()) + 1
    picks = []
    for cluster in clusters.tolist():
        members = (labels == cluster).nonzero().flatten()
        if members.numel() <= per_cluster:
            chosen = torch.randint(members.numel(), (per_cluster,), generator=generator)
        else:
            chosen = torch.randperm(members.numel(), generator=generator)[:per_cluster]
        picks.append(members[chosen])
    picks = torch.cat(picks)
    return picks[torch.randperm(picks.numel(), generator=generator)][:num_samples]
