# ossensor container image: multi-stage.
#   build:   installs the manylinux wheel from dist/ (scripts/build-wheel.sh: the same wheel users pip-install,
#            libpcap inside) into a virtualenv; without one in dist/, compiles from source here instead
#   runtime: the base OS + python3 + libpcap + CA certificates + that virtualenv; no compiler,
#            no pip, no network tools (no ping/curl/ip/tcpdump: the sensor explains connectivity itself)
#
#   sudo scripts/build-wheel.sh && podman build -t ossensor:0.1.0 .          # or docker build
#   podman build --build-arg BASE_IMAGE=localhost/ossensor-base:bookworm ...   # from a locally made base
#
# BASE_IMAGE must be Debian bookworm (or a derivative) so build and runtime share /usr/bin/python3 (3.11).
# A directory `wheelhouse/` in the build context, when present, is offered to pip first
# (PIP_OPTS="--no-index" builds without any index: see docs/deployment.md).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_OPTS=""
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY . /src
# the wheel when dist/ holds one (no compiler in this stage then), else the source and what it needs
RUN set -e; whl=$(ls /src/dist/ossensor-*-manylinux*.whl 2>/dev/null | head -n1); \
    apt-get update; \
    if [ -n "$whl" ]; then apt-get install -y --no-install-recommends python3-venv; \
    else apt-get install -y --no-install-recommends gcc libc6-dev python3-dev python3-venv libpcap-dev; whl=/src; fi; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/ossensor \
 && /opt/ossensor/bin/pip install ${PIP_OPTS} --find-links /src/wheelhouse "$whl" \
 && /opt/ossensor/bin/python -m pip uninstall -q -y pip setuptools wheel \
 && find /opt/ossensor -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/ossensor/bin/python -c 'import ossensor._native, ossensor._filereader; from ossensor.cli import main'

FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG SOURCE=https://github.com/ossensor/ossensor
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ossensor" \
      org.opencontainers.image.description="Open packet-capture sensor: captures a host's traffic and ships it, HMAC-signed over HTTPS, to a vSensor" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# python3 and the shared libraries only; then apt's lists and caches go, and no network tool is in.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libpcap0.8 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && for t in gcc cc c++ make pip pip3 ping ip ss netstat curl wget nc ncat tcpdump telnet ssh; do \
      if command -v $t >/dev/null; then echo "$t must not be in the runtime image" >&2; exit 1; fi; done \
 && mkdir -p /etc/darktrace /var/lib/ossensor \
 && chmod 0700 /etc/darktrace /var/lib/ossensor
COPY --from=build /opt/ossensor /opt/ossensor
# the seccomp allow-list, for the DaemonSet's init container to install on the node
COPY daemonset/ossensor-seccomp.json /opt/ossensor/share/ossensor-seccomp.json
# Runs as uid 0 *with only the capabilities the manifests add* (NET_RAW): Kubernetes gives added
# capabilities to uid 0 only (a non-root user would need ambient capabilities, which it cannot ask for);
# the sensor drops them all once its sockets are open (docs/deployment.md, "Capabilities").
# /etc/darktrace (generated config) and /var/lib/ossensor (spool) are the only places it writes:
# mount writable volumes there and run with a read-only root filesystem.
ENV PATH=/opt/ossensor/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    OSSENSOR_CONFIG_PATH=/etc/darktrace/ossensor.cfg
VOLUME ["/etc/darktrace", "/var/lib/ossensor"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/ossensor/bin/ossensor", "run"]
