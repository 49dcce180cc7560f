"""Self-supervised video object segmentation with an improved long-term
memory and online adaptation (Zhu, Zhang, Fu, Guo & Xie, "Self-supervised
Video Object Segmentation", arXiv 2006.12480, 2020): MAST-style
correspondence trained by Lab reconstruction, a memory that keeps sampling
the past, and test-time adaptation of the network to the video against drift."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from python_models.heads.correspondence import (
    long_term_dilation,
)
from python_models.methods.mast import MAST
from python_models.methods.registry import register

__all__ = ["SSVOS", "ssvos_memory"]


def ssvos_memory(t: int, interval: int = 5, size: int = 4, recent: int = 3, gap: int = 2,
                 long_term_gap: int = 15) -> list[tuple[int, int]]:
    """References of target frame ``t``: frame 0, the ``size`` latest
    frames among every ``interval``-th one seen (a long-term memory that
    keeps sampling the video, where MAST keeps frames 0 and 5 only), and
    ``recent`` frames every ``gap`` back from ``t - 1``; sorted, each with
    MAST's coarse-search dilation (0 within 15 frames)."""
    previous = t - 1
    sampled = [r for r in range(interval, previous + 1, interval)][-size:] if size > 0 and interval > 0 else []
    chosen = {0, *sampled} | {r for r in range(previous, previous - gap * recent, -gap) if r > 0}
    return [(r, long_term_dilation(t - r, long_term_gap)) for r in sorted(chosen)]


@register
class SSVOS(MAST):
    """SS-VOS: MAST's correspondence, a rolling long-term memory, online adaptation.

    Taken from the paper (arXiv 2006.12480; METHODS.md): the approach builds
    on MAST's self-supervised correspondence (Lab reconstruction through a
    memory of reference frames, one softmax over references x taps), adds
    an improved long-term memory for long-term correspondence matching and
    an online adaptation module against tracker drift, and is trained on
    few videos; YouTube-VOS 67.3 overall (J/F seen 67.2/67.9, unseen 63.2/70.6).

    **Unverified** (no code or full text was read; these are this library's
    choices, each a setting):

    - Training is MAST's (same encoder, Lab channel dropout of one of a, b
      times 3/2, references video frames 0 and 2 predicting 4 at radius 6,
      smooth-L1 of 20 * out vs 20 * target), through the shared blocks.
    - Long-term memory (:func:`ssvos_memory`): frame 0 with the given mask,
      the ``long_term_size`` 4 latest of every ``long_term_interval``-th 5
      frame, and MAST's short-term t-1, t-3, t-5; references more than 15
      frames back are read through MAST's coarse search (``wsss_ext.correlation``
      at dilation 2-4, then the window around the found offset); test
      radius 12, one softmax over all, out-of-frame taps score 0 label 0
      (MAST's border rule).
    - Online adaptation: before tracking, a copy of the network takes
      ``adapt_steps`` 10 Adam steps (lr ``adapt_lr`` 1e-4) of the same
      self-supervised reconstruction loss on clips of the test video itself
      (frames i, i + 2, i + 4, cycling through the video); the copy tracks
      the video and the model itself is left unchanged (``track`` is pure).

    Kernels: ``propagate_labels`` in ``losses()`` and ``track``;
    ``correlation`` in ``track`` for references more than 15 frames back.

    Batch: ``frames`` B x 3 x 3 x H x W (video frames 0, 2, 4), RGB in [0, 1];
    optionally ``dropped_channels``. num_classes 0 (no classes).
    """

    KEY = "ssvos"
    PAPER = "Zhu et al., Self-supervised Video Object Segmentation, arXiv 2006.12480, 2020"
    # MAST's settings with the rolling memory in place of MAST's fixed long-term frames.
    DEFAULTS = {
        **{key: value for key, value in MAST.DEFAULTS.items() if key != "long_term"},
        "long_term_interval": 5,
        "long_term_size": 4,
        "adapt_steps": 10,
        "adapt_lr": 1e-4,
    }

    def memory(self, t: int) -> list[tuple[int, int]]:
        c = self.config
        return ssvos_memory(t, int(c.long_term_interval), int(c.long_term_size), int(c.recent), int(c.recent_gap),
                            int(c.long_term_gap))

    def adapted(self, frames: Tensor, steps: int | None = None) -> SSVOS:
        """A copy of this model after ``steps`` (default ``adapt_steps``) online
        adaptation steps on the video ``frames`` T x 3 x H x W (module docstring);
        ``self`` is not modified. Videos under three frames are not adapted."""
        steps = int(self.config.adapt_steps) if steps is None else int(steps)
        model = copy.deepcopy(self)
        model.config.adapt_steps = 0
        length = frames.shape[0]
        if steps <= 0 or length < 3:
            return model
        spacing = min(2, (length - 1) // 2)
        starts = length - 2 * spacing
        optimizer = torch.optim.Adam(model.parameters(), lr=float(self.config.adapt_lr))
        model.train()
        with torch.enable_grad():
            for step in range(steps):
                i = step % starts
                clip = frames[i:i + 2 * spacing + 1:spacing].unsqueeze(0)
                loss = model.reconstruction_loss(clip)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return model.eval()

    def track(self, frames: Tensor, first_labels: Tensor, n_labels: int | None = None,
              progress: bool = False) -> Tensor:
        """:meth:`VideoMethod.track` with the rolling memory, after online
        adaptation of a copy of the network to ``frames`` (``self`` unchanged)."""
        if int(self.config.adapt_steps) <= 0:
            return super().track(frames, first_labels, n_labels, progress)
        if isinstance(frames, Tensor) and frames.dim() != 4:
            raise ValueError(f"frames must be T x 3 x H x W, got shape {tuple(frames.shape)}")
        frames = self.check_frames(frames.unsqueeze(0) if isinstance(frames, Tensor) else frames, "frames", 1)[0]
        self._first_labels(first_labels, tuple(frames.shape[-2:]), n_labels)  # refuse bad labels before adapting
        return self.adapted(frames).track(frames, first_labels, n_labels, progress)
