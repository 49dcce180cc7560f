"""One file per method, each composing the shared blocks and holding its
published ``DEFAULTS``; ``METHODS`` and ``create`` find them by key.
Importing a method's module registers it."""

from python_models.methods.base import IGNORE_INDEX, Method, WSSSMethod, synthetic_tagged_batch
from python_models.methods.base import VideoMethod, synthetic_video_batch
from python_models.methods.registry import METHODS, create, register

from python_models.methods.affinitynet import AffinityNet  # noqa: E402  (each module registers its method)
from python_models.methods.bigbigan import BigBiGAN  # noqa: E402
from python_models.methods.cam import CAM  # noqa: E402
from python_models.methods.colorization import Colorization  # noqa: E402
from python_models.methods.context_encoder import ContextEncoder  # noqa: E402
from python_models.methods.context_prediction import ContextPrediction  # noqa: E402
from python_models.methods.corrflow import CorrFlow  # noqa: E402
from python_models.methods.deepcluster import DeepCluster  # noqa: E402
from python_models.methods.dino import DINO  # noqa: E402
from python_models.methods.dsrg import DSRG  # noqa: E402
from python_models.methods.esl import ESL  # noqa: E402
from python_models.methods.exemplar_cnn import ExemplarCNN  # noqa: E402
from python_models.methods.ficklenet import FickleNet  # noqa: E402
from python_models.methods.grad_cam import GradCAM  # noqa: E402
from python_models.methods.hn_labels import HNLabels  # noqa: E402
from python_models.methods.irnet import IRNet  # noqa: E402
from python_models.methods.jigsaw import Jigsaw  # noqa: E402
from python_models.methods.leopart import Leopart  # noqa: E402
from python_models.methods.mae import MAE  # noqa: E402
from python_models.methods.mast import MAST  # noqa: E402
from python_models.methods.mil import MIL  # noqa: E402
from python_models.methods.moco import MoCo  # noqa: E402
from python_models.methods.npid import NPID  # noqa: E402
from python_models.methods.puzzle_cam import PuzzleCAM  # noqa: E402
from python_models.methods.recurseed import RecurSeed  # noqa: E402
from python_models.methods.rotnet import RotNet  # noqa: E402
from python_models.methods.seam import SEAM  # noqa: E402
from python_models.methods.sec import SEC  # noqa: E402
from python_models.methods.sela import SeLa  # noqa: E402
from python_models.methods.simclr import SimCLR  # noqa: E402
from python_models.methods.simmim import SimMIM  # noqa: E402
from python_models.methods.simple_does_it import SimpleDoesIt  # noqa: E402
from python_models.methods.ssss import SSSS  # noqa: E402
from python_models.methods.ssvos import SSVOS  # noqa: E402
from python_models.methods.swav import SwAV  # noqa: E402

__all__ = [
    "AffinityNet",
    "BigBiGAN",
    "CAM",
    "Colorization",
    "ContextEncoder",
    "ContextPrediction",
    "CorrFlow",
    "create",
    "DeepCluster",
    "DINO",
    "DSRG",
    "ESL",
    "ExemplarCNN",
    "FickleNet",
    "GradCAM",
    "HNLabels",
    "IGNORE_INDEX",
    "IRNet",
    "Jigsaw",
    "Leopart",
    "MAE",
    "MAST",
    "Method",
    "METHODS",
    "MIL",
    "MoCo",
    "NPID",
    "PuzzleCAM",
    "RecurSeed",
    "register",
    "RotNet",
    "SEAM",
    "SEC",
    "SeLa",
    "SimCLR",
    "SimMIM",
    "SimpleDoesIt",
    "SSSS",
    "SSVOS",
    "SwAV",
    "synthetic_tagged_batch",
    "synthetic_video_batch",
    "VideoMethod",
    "WSSSMethod",
]
