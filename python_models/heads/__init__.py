"""Heads shared by the methods: small modules on top of a backbone's features."""

from python_models.heads.affinity import AFFINITY_HEAD_CHANNELS, AffinityHead
from python_models.heads.cam import CAMHead
from python_models.heads.correspondence import CorrespondenceEncoder, read_memory
from python_models.heads.deeplab import ASPP, DeepLabV3PlusDecoder
from python_models.heads.encoder import GlobalPoolEncoder
from python_models.heads.fickle import derive_seed, FickleHead
from python_models.heads.gate import gate_mask, stochastic_gate, StochasticGate
from python_models.heads.irnet import (
    DisplacementBranch,
    EdgeBranch,
    resnet_stage_features,
    resnet_stage_strides,
)
from python_models.heads.pcm import PCM, pcm_affinity, pcm_input, pcm_refine
from python_models.heads.pretext import frozen_call, mlp, pooled_features, PRETEXT_OUTPUT_STRIDE
from python_models.heads.ssl import DINOHead, ProjectionMLP, Prototypes, WeightNormLinear
from python_models.heads.ssss import GCI, SSSSDecoder

__all__ = [
    "AFFINITY_HEAD_CHANNELS",
    "AffinityHead",
    "ASPP",
    "CAMHead",
    "CorrespondenceEncoder",
    "DeepLabV3PlusDecoder",
    "derive_seed",
    "DINOHead",
    "DisplacementBranch",
    "EdgeBranch",
    "FickleHead",
    "frozen_call",
    "gate_mask",
    "GCI",
    "GlobalPoolEncoder",
    "mlp",
    "PCM",
    "pcm_affinity",
    "pcm_input",
    "pcm_refine",
    "pooled_features",
    "read_memory",
    "PRETEXT_OUTPUT_STRIDE",
    "ProjectionMLP",
    "Prototypes",
    "resnet_stage_features",
    "resnet_stage_strides",
    "SSSSDecoder",
    "stochastic_gate",
    "StochasticGate",
    "WeightNormLinear",
]
