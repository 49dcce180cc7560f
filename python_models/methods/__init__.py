"""One file per method, each composing the shared blocks and holding its
published ``DEFAULTS``; ``METHODS`` and ``create`` find them by key.
Importing a method's module registers it."""

from python_models.methods.base import IGNORE_INDEX, Method, WSSSMethod, synthetic_tagged_batch
from python_models.methods.registry import METHODS, create, register

from python_models.methods.affinitynet import AffinityNet  # noqa: E402  (each module registers its method)
from python_models.methods.cam import CAM  # noqa: E402
from python_models.methods.dsrg import DSRG  # noqa: E402
from python_models.methods.esl import ESL  # noqa: E402
from python_models.methods.ficklenet import FickleNet  # noqa: E402
from python_models.methods.grad_cam import GradCAM  # noqa: E402
from python_models.methods.irnet import IRNet  # noqa: E402
from python_models.methods.mil import MIL  # noqa: E402
from python_models.methods.puzzle_cam import PuzzleCAM  # noqa: E402
from python_models.methods.recurseed import RecurSeed  # noqa: E402
from python_models.methods.seam import SEAM  # noqa: E402
from python_models.methods.sec import SEC  # noqa: E402
from python_models.methods.simple_does_it import SimpleDoesIt  # noqa: E402
from python_models.methods.ssss import SSSS  # noqa: E402

__all__ = [
    "AffinityNet",
    "CAM",
    "DSRG",
    "ESL",
    "FickleNet",
    "GradCAM",
    "IGNORE_INDEX",
    "IRNet",
    "METHODS",
    "MIL",
    "Method",
    "PuzzleCAM",
    "RecurSeed",
    "SEAM",
    "SEC",
    "SimpleDoesIt",
    "SSSS",
    "WSSSMethod",
    "create",
    "register",
    "synthetic_tagged_batch",
]
