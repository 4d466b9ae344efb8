"""Test-wide settings: never reach a hub, no analytics, quiet MLflow; one torch thread per core per worker; memory
of dropped models handed back."""

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "0"
os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"

# xdist runs one worker per core: a worker that also spreads torch over every core oversubscribes the machine, and
# OpenMP threads waiting on each other then cost far more than they bring (measured on 2 cores, two processes
# training MobileNetV2: 21 s each with 2 threads, 5-6 s each with 1). The variable reaches the fits and servers
# the tests start as subprocesses too.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_threads)
    import torch

    torch.set_num_threads(_threads)


# Objects in reference cycles (a trainer and its module, a fit's callbacks) wait for the cyclic collector, which big
# tensors do not trigger: before zoo models stopped being cycles (zoo/_backbone.StageView holds its model weakly), a
# worker grew to 15 GB over the zoo's parametrisations and was OOM-killed. After a test that left the worker this
# much bigger than after the last collection, collect (and hand the freed heap back to the OS).
COLLECT_GROWTH_MB = 1024
_collected_at = [0]


def _rss_mb() -> int:
    status = Path("/proc/self/status")
    if not status.is_file():
        return 0
    line = next((x for x in status.read_text().splitlines() if x.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) // 1024


@pytest.fixture(autouse=True)
def _free_dropped_models() -> Iterator[None]:
    yield
    if _rss_mb() - _collected_at[0] > COLLECT_GROWTH_MB:
        gc.collect()
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass
        _collected_at[0] = _rss_mb()
