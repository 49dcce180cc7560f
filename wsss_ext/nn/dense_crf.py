"""``DenseCRF``: ``wsss_ext.dense_crf`` as a module, with the published settings."""

from __future__ import annotations

from torch import Tensor, nn

from wsss_ext.ops._checks import check_iterations, check_real
from wsss_ext.ops.dense_crf import dense_crf

# Settings the WSSS papers' code passes (REFERENCES.md, section 1).
PRESETS: dict[str, dict[str, float]] = {
    "affinitynet": dict(gaussian_sxy=3, gaussian_weight=3, bilateral_sxy=80, bilateral_srgb=13, bilateral_weight=10),
    "irnet": dict(gaussian_sxy=3, gaussian_weight=3, bilateral_sxy=50, bilateral_srgb=5, bilateral_weight=10),
    "recurseed": dict(gaussian_sxy=1, gaussian_weight=3, bilateral_sxy=67, bilateral_srgb=3, bilateral_weight=4),
}


class DenseCRF(nn.Module):
    """Dense CRF mean-field refinement: ``forward(unary, image) -> Q``.

    Args are those of :func:`wsss_ext.dense_crf`. The output carries no
    gradient: use it as a target (SEC/DSRG's constrain-to-boundary loss) or a
    pseudo-label.

    Example:
        >>> import torch
        >>> from wsss_ext.nn import DenseCRF
        >>> crf = DenseCRF.preset("affinitynet", scale=12)   # 41 x 41 maps, as SEC's loss
        >>> crf
        DenseCRF(n_iters=10, gaussian_sxy=0.25, gaussian_weight=3.0, bilateral_sxy=6.667, bilateral_srgb=13.0, bilateral_weight=10.0)
        >>> q = crf(torch.rand(2, 21, 41, 41), torch.randint(0, 256, (2, 3, 41, 41), dtype=torch.uint8))
        >>> q.shape
        torch.Size([2, 21, 41, 41])
    """

    def __init__(
        self,
        n_iters: int = 10,
        *,
        gaussian_sxy: float = 3.0,
        gaussian_weight: float = 3.0,
        bilateral_sxy: float = 80.0,
        bilateral_srgb: float = 13.0,
        bilateral_weight: float = 10.0,
    ) -> None:
        super().__init__()
        self.n_iters = check_iterations(n_iters, "n_iters")
        self.gaussian_sxy = check_real(gaussian_sxy, "gaussian_sxy")
        self.gaussian_weight = check_real(gaussian_weight, "gaussian_weight")
        self.bilateral_sxy = check_real(bilateral_sxy, "bilateral_sxy")
        self.bilateral_srgb = check_real(bilateral_srgb, "bilateral_srgb")
        self.bilateral_weight = check_real(bilateral_weight, "bilateral_weight")

    @classmethod
    def preset(cls, name: str, scale: float = 1.0, n_iters: int = 10) -> DenseCRF:
        """A published setting (``"affinitynet"``, ``"irnet"``, ``"recurseed"``),
        with both spatial widths divided by ``scale`` for maps downscaled that much."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        scale = check_real(scale, "scale", positive=True)
        settings = dict(PRESETS[name])
        settings["gaussian_sxy"] /= scale
        settings["bilateral_sxy"] /= scale
        return cls(n_iters, **settings)

    def forward(self, unary: Tensor, image: Tensor) -> Tensor:
        return dense_crf(
            unary,
            image,
            self.n_iters,
            gaussian_sxy=self.gaussian_sxy,
            gaussian_weight=self.gaussian_weight,
            bilateral_sxy=self.bilateral_sxy,
            bilateral_srgb=self.bilateral_srgb,
            bilateral_weight=self.bilateral_weight,
        )

    def extra_repr(self) -> str:
        return (
            f"n_iters={self.n_iters}, gaussian_sxy={self.gaussian_sxy:.4g}, gaussian_weight={self.gaussian_weight}, "
            f"bilateral_sxy={self.bilateral_sxy:.4g}, bilateral_srgb={self.bilateral_srgb}, "
            f"bilateral_weight={self.bilateral_weight}"
        )
