"""Process-wide state a fit or a store may touch, restored exactly: the environment, MLflow's globals, cuDNN's mode.

MLflow keeps its tracking URI, registry URI and active experiment in module globals and exports them as
``MLFLOW_*`` environment variables; Lightning's ``seed_everything`` and its DDP launcher export ``PL_*``,
``MASTER_*`` and rank variables, and its ``Trainer(benchmark=...)`` sets ``torch.backends.cudnn.benchmark``.
:func:`restored` is the one context manager that lets code change them for a block and puts back exactly what it
found (variables added are removed, changed ones get their old value back).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def restored() -> Iterator[None]:
    """Run a block, then restore ``os.environ``, MLflow's tracking/registry URI and experiment globals and
    ``torch.backends.cudnn.benchmark``."""
    import torch
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id)
    env, cudnn_benchmark = dict(os.environ), torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id = saved
        torch.backends.cudnn.benchmark = cudnn_benchmark
        for key in [k for k in os.environ if k not in env]:
            del os.environ[key]
        for key, value in env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op torch threads, then put back the number found.

    Many small full-batch ops (the audit's L-BFGS probes: a 1,500 x 1,280 matmul and dozens of vector dot products per
    step) spend more time waking and syncing a second thread than computing: one thread fits them 2.3x faster on two
    busy cores.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
