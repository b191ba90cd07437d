#!/usr/bin/env bash
# Install what ossensor needs on a fresh Debian/Ubuntu machine (as root), then the
# package itself (editable, so the C extension is built next to the sources).
# Idempotent: what is already present is not installed again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ip >/dev/null || need_apt+=(iproute2)
command -v tcpdump >/dev/null || need_apt+=(tcpdump)
command -v trafgen >/dev/null || need_apt+=(netsniff-ng)
command -v tshark >/dev/null || need_apt+=(tshark)
command -v tinyproxy >/dev/null || need_apt+=(tinyproxy)  # HTTP CONNECT proxy for the link tests
command -v gcc >/dev/null || need_apt+=(gcc)
[ -e /usr/include/pcap/pcap.h ] || need_apt+=(libpcap-dev)
# the container test (tests/test_container.py) and least-privilege tests; strace for scripts/seccomp-record.sh
command -v podman >/dev/null || need_apt+=(podman)
command -v runc >/dev/null || need_apt+=(runc)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v capsh >/dev/null || need_apt+=(libcap2-bin)
command -v strace >/dev/null || need_apt+=(strace)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)  # the k8s e2e scripts (tests/test_k8s_e2e.py)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
# pyproject.toml's SPDX license needs setuptools 77: pip's isolated builds fetch it, and so must this
# interpreter for `python3 setup.py build_ext --inplace` (developers, worktrees)
$PY -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null \
  || $PY -m pip install -q --disable-pip-version-check --root-user-action=ignore 'setuptools>=77'
if ! $PY -c 'import ossensor._native, ossensor._filereader, rich, pcapy, pyroute2, scapy, hypothesis, pytest' 2>/dev/null \
   || [ -n "$(find native setup.py pyproject.toml -newer "$(ls ossensor/_native*.so 2>/dev/null | head -n1 || echo .)" -type f 2>/dev/null | head -n1)" ]; then
  echo "setup: installing the ossensor package and its test dependencies"
  $PY -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'
fi

# Manifest checkers for tests/test_deploy.py, in their own virtualenv: checkov pins versions
# (pydantic, packaging, ...) that would fight the sensor's own dependencies.
DEPLOY_TOOLS=${OSSENSOR_DEPLOY_TOOLS:-/opt/ossensor-deploy-tools}
if ! [ -x "$DEPLOY_TOOLS/bin/checkov" ] || ! [ -x "$DEPLOY_TOOLS/bin/kubernetes-validate" ]; then
  echo "setup: installing checkov and kubernetes-validate into $DEPLOY_TOOLS"
  $PY -m venv "$DEPLOY_TOOLS"
  "$DEPLOY_TOOLS/bin/pip" install -q --disable-pip-version-check 'checkov>=3.2' 'kubernetes-validate>=1.30'
fi
