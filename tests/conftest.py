"""Test-wide settings: never reach a hub, no analytics, quiet MLflow."""

import os

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
