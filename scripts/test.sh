#!/usr/bin/env bash
# Run the test suite (as root: tests make network namespaces and capture for real).
# Installs what a fresh machine lacks first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "tests need root (network namespaces, AF_PACKET): run with sudo" >&2; exit 2; fi
scripts/setup.sh
exec ${PYTHON:-python3} -m pytest -q "$@"
