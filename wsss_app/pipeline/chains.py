"""The refinement chains that turn CAMs into pseudo-masks, as the WSSS papers
chain the kernels:

- ``cam``: a background score (a constant ``bg_threshold``, or
  ``(1 - max_c cam)^bg_power``) against the CAMs of the image's classes,
  argmax (Puzzle-CAM's CAM row).
- ``cam+crf``: dense CRF on the normalised [background, CAMs] scores
  (AffinityNet / IRNet's CRF step).
- ``cam+pamr``: PAMR on the same scores at full resolution (1-stage-wseg).
- ``cam+rw``: the random walk of the CAMs at the walk's stride on local
  affinities (:mod:`wsss_app.pipeline.walks`: a trained IRNet boundary or
  AffinityNet feature network, else the image's colour gradients),
  upsampled, then IRNet's rule (divide by the max, a constant background
  ``rw_bg_threshold``) or PSA's (a ``(1 - max)^rw_bg_power`` background
  channel walked with the classes).
- ``cam+rw+crf``: the dense CRF on the random walk's scores (Puzzle-CAM's
  "+RW +dCRF" row).

A chain is also any comma-separated list of the steps ``rw``, ``pamr``,
``crf`` applied in order after the CAM ("pamr,crf": PAMR, then the CRF on its
output). Every chain takes a batch: images B x 3 x H x W uint8, CAMs
B x C x H x W in [0, 1] of the C foreground classes (zero for classes the
image is not tagged with), and returns B x H x W labels, 0 for background and
c + 1 for CAM channel c.

:class:`ChainSettings` holds every parameter; its defaults are published
settings for VOC-sized photos (about 500 x 375), and :data:`PRESETS` holds
each paper's (METHODS.md, section 3). On much smaller images the spatial
widths must shrink with the image (the demo's settings do so explicitly).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

import wsss_ext
from python_models.methods.puzzle_cam import PUZZLE_CRF
from python_models.methods.recurseed import RECURSEED_CRF
from python_models.pseudo.confident import IRNET_CRF, PSA_CRF
from python_models.pseudo.pamr_gt import PAMR_DILATIONS
from wsss_app.pipeline.walks import ImageGradientWalk, WalkSource, image_boundary
from wsss_ext.ops._checks import check_int, check_real

__all__ = ["CHAINS", "OPTIONS", "PRESETS", "STEPS", "ChainSettings", "chain_settings", "image_boundary",
           "parse_chain", "refine", "settings_dict"]

CHAINS = ("cam", "cam+crf", "cam+pamr", "cam+rw", "cam+rw+crf")
STEPS = ("rw", "pamr", "crf")

# 1-stage-wseg core/config.py: NET.PAMR_ITER 10, NET.PAMR_KERNEL (1, 2, 4, 8, 12, 24); sigma 0.1 (its PAMR).
SSSS_PAMR = dict(n_iters=10, dilations=PAMR_DILATIONS, sigma=0.1)


def _real(value, name: str, *, positive: bool = False, minimum: float | None = None) -> float:
    value = check_real(value, name, positive=positive)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _int(value, name: str, *, minimum: int) -> int:
    return check_int(value, name, minimum=minimum)


@dataclass
class ChainSettings:
    """Parameters of the chains. The defaults are the papers' for VOC photos:

    - ``crf``: PSA's (``infer_cls.py`` / ``tool/imutils.py crf_inference``:
      gaussian sxy 3, compat 3; bilateral sxy 80, srgb 13, compat 10;
      10 iterations), which SEAM and 1-stage-wseg reuse.
    - ``pamr``: 1-stage-wseg's (10 iterations, dilations 1, 2, 4, 8, 12, 24, sigma 0.1).
    - the walk: IRNet's (``run_sample.py``: beta 10, exp_times 8 = 256 steps,
      radius 5 at stride 4, ``sem_seg_bg_thres`` 0.25).
    - ``bg_threshold`` 0.25, the CAM's constant background (IRNet's walk
      threshold; Puzzle-CAM's ``make_pseudo_labels.py`` default).

    ``bg_power`` / ``rw_bg_power``, when set, replace the constant background
    of the CAM / the walk by ``(1 - max_c cam)^power`` (PSA, SEAM, RecurSeed).
    """

    bg_threshold: float = 0.25
    bg_power: float | None = None
    crf: dict = field(default_factory=lambda: dict(PSA_CRF))
    pamr: dict = field(default_factory=lambda: dict(SSSS_PAMR))
    rw_stride: int = 4
    rw_beta: float = 10.0
    rw_steps: int = 256
    rw_radius: int = 5
    rw_bg_threshold: float = 0.25
    rw_bg_power: float | None = None
    boundary_blur: float = 2.0

    def __post_init__(self) -> None:
        self.crf = {**PSA_CRF, **self.crf}
        self.pamr = {**SSSS_PAMR, **self.pamr}
        unknown = sorted(set(self.crf) - set(PSA_CRF)) + sorted(set(self.pamr) - set(SSSS_PAMR))
        if unknown:
            raise TypeError(f"unknown CRF / PAMR setting(s) {unknown}; the CRF's are {sorted(PSA_CRF)}, "
                            f"PAMR's {sorted(SSSS_PAMR)}")
        _real(self.bg_threshold, "bg_threshold", minimum=0)
        _real(self.rw_bg_threshold, "rw_bg_threshold", minimum=0)
        for name in ("bg_power", "rw_bg_power"):
            if getattr(self, name) is not None:
                _real(getattr(self, name), name, positive=True)
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            _real(self.crf[name], f"crf[{name!r}]", positive=True)
        for name in ("gaussian_weight", "bilateral_weight"):
            _real(self.crf[name], f"crf[{name!r}]", minimum=0)
        _int(self.crf["n_iters"], "crf['n_iters']", minimum=0)
        _int(self.pamr["n_iters"], "pamr['n_iters']", minimum=0)
        _real(self.pamr["sigma"], "pamr['sigma']", positive=True)
        dilations = self.pamr["dilations"]
        if isinstance(dilations, (str, bytes)) or not hasattr(dilations, "__len__") or len(dilations) == 0:
            raise TypeError(f"pamr['dilations'] must be a non-empty sequence of ints, got {dilations!r}")
        self.pamr["dilations"] = tuple(_int(d, "pamr['dilations']", minimum=1) for d in dilations)
        _int(self.rw_stride, "rw_stride", minimum=1)
        _int(self.rw_steps, "rw_steps", minimum=0)
        _int(self.rw_radius, "rw_radius", minimum=1)
        _real(self.rw_beta, "rw_beta", minimum=0)
        _real(self.boundary_blur, "boundary_blur", minimum=0)

    def replace(self, **options) -> ChainSettings:
        """A copy with the :data:`OPTIONS` given (``None`` values ignored),
        e.g. ``replace(crf_bilateral_sxy=20, walk_beta=8)``. Setting
        ``bg_threshold`` (``walk_bg_threshold``) drops a background power, and
        the reverse. Raises TypeError for an unknown option."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"unknown chain option(s) {unknown}; options are {sorted(OPTIONS)}")
        options = {name: value for name, value in options.items() if value is not None}
        for pair in (("bg_threshold", "bg_power"), ("walk_bg_threshold", "walk_bg_power")):
            if all(name in options for name in pair):
                raise ValueError(f"give {pair[0]} or {pair[1]}, not both: each replaces the other")
        settings = self
        for name, value in options.items():
            group, key = OPTIONS[name]
            if group is None:
                change = {key: value}
                # A threshold given replaces the preset's power (a power given is used as it is).
                if name == "bg_threshold":
                    change["bg_power"] = None
                elif name == "walk_bg_threshold":
                    change["rw_bg_power"] = None
            else:
                change = {group: {**getattr(settings, group), key: value}}
            try:  # one option at a time, so that an error names the option
                settings = dataclasses.replace(settings, **change)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{name}={value!r}: {error}") from error
        return settings


# Flat option name (the command's flag, without "--", dashes as underscores) -> (group, key).
OPTIONS: dict[str, tuple[str | None, str]] = {
    "crf_iters": ("crf", "n_iters"),
    "crf_gaussian_sxy": ("crf", "gaussian_sxy"),
    "crf_gaussian_weight": ("crf", "gaussian_weight"),
    "crf_bilateral_sxy": ("crf", "bilateral_sxy"),
    "crf_bilateral_srgb": ("crf", "bilateral_srgb"),
    "crf_bilateral_weight": ("crf", "bilateral_weight"),
    "pamr_iters": ("pamr", "n_iters"),
    "pamr_dilations": ("pamr", "dilations"),
    "walk_beta": (None, "rw_beta"),
    "walk_steps": (None, "rw_steps"),
    "walk_radius": (None, "rw_radius"),
    "walk_bg_threshold": (None, "rw_bg_threshold"),
    "walk_bg_power": (None, "rw_bg_power"),
    "bg_threshold": (None, "bg_threshold"),
    "bg_power": (None, "bg_power"),
}

# Each paper's settings for VOC photos (METHODS.md, section 3; the files named are the papers' repositories').
PRESETS: dict[str, ChainSettings] = {
    # psa infer_cls.py / infer_aff.py: CRF 3/3, 80/13/10, 10 iterations; walk beta 8, logt 8 (256 steps),
    # radius 5 on stride-8 features, background (1 - max)^16 (--alpha 16) before the walk and for the CAM.
    "affinitynet": ChainSettings(bg_power=16.0, crf=dict(PSA_CRF), rw_stride=8, rw_beta=8.0, rw_steps=256,
                                 rw_radius=5, rw_bg_power=16.0),
    # irn run_sample.py: --cam_eval_thres 0.15 (the CAM's background); step/cam_to_ir_label.py's CRF 3/3, 50/5/10,
    # 10 iterations; walk --beta 10 --exp_times 8 (256 steps), radius 5 at stride 4, --sem_seg_bg_thres 0.25.
    "irnet": ChainSettings(bg_threshold=0.15, crf=dict(IRNET_CRF), rw_stride=4, rw_beta=10.0, rw_steps=256,
                           rw_radius=5, rw_bg_threshold=0.25),
    # PuzzleCAM README: make_pseudo_labels.py --threshold 0.35 --crf_iteration 1, CRF 3/3, 50/5/10
    # (tools/ai/demo_utils.py crf_inference_label); inference_rw.py: IRNet's walk, beta 10, exp_times 8, radius 5.
    "puzzle_cam": ChainSettings(bg_threshold=0.35, crf=dict(PUZZLE_CRF), rw_stride=4, rw_beta=10.0, rw_steps=256,
                                rw_radius=5, rw_bg_threshold=0.35),
    # SEAM infer_SEAM.py: CAM background 0.26, PSA's CRF (tool/imutils.py crf_inference: 3/3, 80/13/10);
    # infer_aff.py: --alpha 6, --beta 8, --logt 6 (64 steps) on stride-8 features, radius 5.
    "seam": ChainSettings(bg_threshold=0.26, crf=dict(PSA_CRF), rw_stride=8, rw_beta=8.0, rw_steps=64, rw_radius=5,
                          rw_bg_power=6.0),
    # RecurSeed (Jo, Yu & Kim 2022): background (1 - max)^2, CRF 1/3, 67/3/4, 10 iterations; PAMR 10 iterations,
    # dilations 1, 2, 4, 8, 12, 24, sigma 0.1 in the recursion; its multi-stage walk is IRNet's.
    "recurseed": ChainSettings(bg_power=2.0, crf=dict(RECURSEED_CRF), pamr=dict(SSSS_PAMR)),
}


def chain_settings(preset: str | None = None, **options) -> ChainSettings:
    """The settings of ``preset`` (a key of :data:`PRESETS`; None: the
    published defaults of :class:`ChainSettings`) with ``options`` (see
    :meth:`ChainSettings.replace`) overriding them."""
    if preset is None:
        base = ChainSettings()
    elif preset in PRESETS:
        base = dataclasses.replace(PRESETS[preset])
    else:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return base.replace(**options)


def parse_chain(chain: str | list[str] | tuple[str, ...]) -> list[str]:
    """The steps of a chain: a name of CHAINS ("cam+rw+crf"), a comma-separated
    list ("pamr,crf"), or a sequence of steps. Raises ValueError for an unknown step."""
    if isinstance(chain, str):
        parts = chain.replace("+", ",").split(",")
        steps = [part.strip() for part in parts if part.strip() and part.strip() != "cam"]
    else:
        steps = list(chain)
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise ValueError(f"unknown refinement step(s) {unknown}; steps are {STEPS} (or a chain of {CHAINS})")
    return steps


def _normalised(scores: Tensor) -> Tensor:
    return scores / scores.sum(1, keepdim=True).clamp(min=1e-8)


def _with_background(foreground: Tensor, threshold: float, power: float | None) -> Tensor:
    """[B, C, H, W] foreground scores -> [B, 1 + C, H, W] with a background
    channel: ``(1 - max)^power`` when ``power`` is set, else the constant ``threshold``."""
    if power is None:
        background = torch.full_like(foreground[:, :1], threshold)
    else:
        background = (1 - foreground.amax(1, keepdim=True)).clamp(min=0).pow(power)
    return torch.cat([background, foreground], 1)


def _random_walk(images: Tensor, foreground: Tensor, settings: ChainSettings, walk: WalkSource) -> Tensor:
    """The walk of the foreground scores at the walk's stride (both references
    zero-pad the image to a multiple of it and average-pool the CAMs), upsampled
    by the stride and cropped (as both do); then IRNet's rule (divide by each image's max,
    constant background ``rw_bg_threshold``) or PSA's (the ``(1 - max)^rw_bg_power``
    background channel made at full resolution and walked with the classes)."""
    height, width = foreground.shape[-2:]
    stride = walk.stride
    padding = (0, -width % stride, 0, -height % stride)
    # Each source returns its maps at ceil(H / stride) x ceil(W / stride) of the unpadded images.
    affinity, keep = walk(images, settings.rw_radius)
    small = F.avg_pool2d(F.pad(foreground, padding), stride)
    if keep is not None:
        small = small * keep
    if settings.rw_bg_power is not None:
        background = F.avg_pool2d(F.pad(_with_background(foreground, 0.0, settings.rw_bg_power)[:, :1], padding),
                                  stride)
        small = torch.cat([background, small], 1)
    walked = wsss_ext.random_walk(small, affinity, beta=settings.rw_beta, n_steps=settings.rw_steps)
    walked = F.interpolate(walked, scale_factor=stride, mode="bilinear", align_corners=False)[..., :height, :width]
    if settings.rw_bg_power is not None:
        return walked
    walked = walked / walked.flatten(1).amax(1).clamp(min=1e-5).view(-1, 1, 1, 1)
    return _with_background(walked, settings.rw_bg_threshold, None)


def refine(images: Tensor, cams: Tensor, chain: str | list[str] = "cam+crf",
           settings: ChainSettings | None = None, walk: WalkSource | None = None) -> Tensor:
    """Labels (B x H x W int64) of one chain; see the module docstring.

    Args:
        images: B x 3 x H x W uint8 RGB.
        cams: B x C x H x W in [0, 1], the foreground classes' CAMs (zero
            for classes the image does not have).
        chain: a name of :data:`CHAINS` or steps (:func:`parse_chain`).
        settings: :class:`ChainSettings` (default: the published defaults).
        walk: where the ``rw`` step takes its affinities
            (:mod:`wsss_app.pipeline.walks`); default
            :class:`~wsss_app.pipeline.walks.ImageGradientWalk` at ``rw_stride``.
    """
    steps = parse_chain(chain)
    settings = ChainSettings() if settings is None else settings
    if not isinstance(settings, ChainSettings):
        raise TypeError(f"settings must be a ChainSettings, got {type(settings).__name__}")
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        shape = (images.dtype, tuple(images.shape)) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be B x 3 x H x W uint8, got {shape}")
    if not isinstance(cams, Tensor) or cams.dim() != 4 or cams.shape[0] != images.shape[0] \
            or cams.shape[2:] != images.shape[2:]:
        shape = tuple(cams.shape) if isinstance(cams, Tensor) else type(cams).__name__
        raise ValueError(f"cams {shape} must be B x C x H x W with the images' B, H, W {tuple(images.shape)}")
    if "rw" in steps and walk is None:
        walk = ImageGradientWalk(settings.rw_stride, settings.boundary_blur)
    # Non-negative scores, channel 0 the background's.
    scores = _with_background(cams.float(), settings.bg_threshold, settings.bg_power)
    for step in steps:
        if step == "rw":
            scores = _random_walk(images, scores[:, 1:], settings, walk)
        elif step == "pamr":
            scores = wsss_ext.pamr(images.float() / 255, _normalised(scores), **settings.pamr)
        else:
            unary = wsss_ext.unary_from_probs(_normalised(scores))
            scores = wsss_ext.dense_crf(unary, images, **settings.crf)
    return scores.argmax(1)


def settings_dict(settings: ChainSettings) -> Mapping:
    """``settings`` as plain JSON-able values (for reports)."""
    values = dataclasses.asdict(settings)
    values["pamr"]["dilations"] = list(values["pamr"]["dilations"])
    return values
