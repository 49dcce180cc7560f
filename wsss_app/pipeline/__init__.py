"""The pseudo-label stage of WSSS as a pipeline: a synthetic dataset with
image-level tags and pixel ground truth, CAMs from a classifier trained on the
tags, the refinement chains the papers use (dense CRF, PAMR, random walk),
evaluation, and the ``wsss-ext demo / refine / evaluate`` commands."""

from wsss_app.pipeline.chains import CHAINS, ChainSettings, refine
from wsss_app.pipeline.synthetic import CLASS_NAMES, SyntheticDataset, make_dataset

__all__ = ["CHAINS", "CLASS_NAMES", "ChainSettings", "SyntheticDataset", "make_dataset", "refine"]
