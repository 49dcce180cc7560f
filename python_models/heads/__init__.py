"""Heads shared by the methods: small modules on top of a backbone's features."""

from python_models.heads.cam import CAMHead
from python_models.heads.fickle import FickleHead, derive_seed
from python_models.heads.pcm import PCM, pcm_affinity, pcm_input, pcm_refine

__all__ = ["CAMHead", "FickleHead", "PCM", "derive_seed", "pcm_affinity", "pcm_input", "pcm_refine"]
