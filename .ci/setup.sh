#!/usr/bin/env bash
# What the tests need beyond the Rust toolchain, installed into the checkout:
# kubernetes-validate (PyPI, bundles its schemas, works offline) in .ci/venv.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x venv/bin/kubernetes-validate ]; then
    python3 -m venv venv
    venv/bin/pip install --quiet --disable-pip-version-check kubernetes-validate
fi
venv/bin/kubernetes-validate --version
