"""The application above both packages: the ``wsss-ext`` command and its
pipeline (synthetic data, refinement chains, the demo, refine and evaluate).
It imports wsss_ext (the kernels) and python_models (the methods); neither
of them imports it."""
