"""Test-wide settings: never reach a hub, no analytics, quiet MLflow."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "0"
os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
