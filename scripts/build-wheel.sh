#!/usr/bin/env bash
# Build what `pip install` takes without a compiler: dist/ossensor-<version>-cp311-cp311-manylinux_2_31_x86_64.whl
# (the three C modules built against glibc 2.31, libpcap bundled) and dist/ossensor-<version>.tar.gz (the sdist).
#
#   sudo scripts/build-wheel.sh        # root: debootstrap and chroot; roots cached in $OSSENSOR_ROOTS
#
# How, and why this way:
#  * glibc: a wheel runs where its glibc symbol versions are at most the system's. The C modules are compiled
#    in a Debian bullseye root (glibc 2.31, made once with debootstrap and cached) against this machine's
#    Python 3.11 headers (an extension module links no libpython: the headers are all it needs), so the
#    wheel is tagged manylinux_2_31 (Debian 11+, Ubuntu 20.04+, RHEL 9+).
#  * libpcap: built in that root from Debian's own libpcap source package (`apt-get source libpcap`),
#    configured for capture only (no D-Bus, RDMA, USB, Bluetooth or netlink-genl back ends: Debian's build
#    pulls in libdbus, libibverbs, libnl and what they need). auditwheel (with patchelf) copies it into
#    the wheel (ossensor.libs/) and points the module at it; capture/pcapcompile.py loads that same copy.
#  * the wheel itself is made on this machine by setuptools (pure-Python files, metadata) and its three
#    .so files are replaced by the bullseye-built ones before auditwheel checks and tags it.
# Build tools (auditwheel, patchelf, twine, wheel) live in their own virtualenv under $OSSENSOR_ROOTS.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "build-wheel: needs root (debootstrap, chroot): run with sudo" >&2; exit 2; fi

CACHE=${OSSENSOR_ROOTS:-/var/cache/ossensor-roots}
ROOTFS=$CACHE/bullseye
PY=${PYTHON:-python3}
PLAT=manylinux_2_31_x86_64
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$CACHE" dist
log() { echo "build-wheel: $*"; }

# 1. the bullseye build root, once
if [ ! -x "$ROOTFS/usr/bin/gcc" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
  log "making a Debian bullseye build root in $ROOTFS (once)"
  rm -rf "$ROOTFS.tmp"
  debootstrap --variant=minbase --include=gcc,libc6-dev,make,flex,bison bullseye "$ROOTFS.tmp" "$MIRROR" >/dev/null
  mv "$ROOTFS.tmp" "$ROOTFS"
fi

# 2. libpcap from Debian's source package, capture only, built in the root once
PCAP_VER=$(ls -d "$CACHE"/src/libpcap-*/ 2>/dev/null | sed 's#.*/libpcap-##; s#/$##' | sort -V | tail -n1 || true)
if [ -z "$PCAP_VER" ]; then
  log "fetching Debian's libpcap source package"
  if ! grep -rqs "deb-src" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$MIRROR" > /etc/apt/sources.list.d/ossensor-src.sources
  fi
  apt-get update -qq
  command -v dpkg-source >/dev/null || apt-get install -y -qq dpkg-dev >/dev/null
  mkdir -p "$CACHE/src"
  (cd "$CACHE/src" && apt-get source -qq libpcap >/dev/null 2>&1)
  PCAP_VER=$(ls -d "$CACHE"/src/libpcap-*/ | sed 's#.*/libpcap-##; s#/$##' | sort -V | tail -n1)
fi
PCAP_PREFIX=/opt/libpcap-$PCAP_VER
if [ ! -e "$ROOTFS$PCAP_PREFIX/lib/libpcap.so" ]; then
  log "building libpcap $PCAP_VER (capture only) in the bullseye root"
  rm -rf "$ROOTFS/build/libpcap"
  mkdir -p "$ROOTFS/build"
  cp -a "$CACHE/src/libpcap-$PCAP_VER" "$ROOTFS/build/libpcap"
  chroot "$ROOTFS" /bin/sh -c "cd /build/libpcap && ./configure -q --prefix=$PCAP_PREFIX --disable-dbus --disable-rdma \
      --disable-usb --disable-bluetooth --disable-netmap --disable-dpdk --without-libnl --without-dag \
      --without-septel --without-snf --without-turbocap >/dev/null && make -s -j2 >/dev/null 2>&1 && make -s install >/dev/null"
fi

# 3. the C modules, compiled in the root against this Python's headers and that libpcap
PYINC=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
SUFFIX=$($PY -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
rm -rf "$ROOTFS/build/py" "$ROOTFS/build/src" "$ROOTFS/build/out"
mkdir -p "$ROOTFS/build/py" "$ROOTFS/build/out"
cp -a "$PYINC/." "$ROOTFS/build/py/"
cp -a native "$ROOTFS/build/src"
# sources and libraries exactly as setup.py declares them (tests/asan.py reads them the same way)
$PY - "$SUFFIX" "$PCAP_PREFIX" > "$ROOTFS/build/compile.sh" <<'EOF'
import ast, sys
suffix, pcap = sys.argv[1], sys.argv[2]
tree = ast.parse(open("setup.py").read())
for call in ast.walk(tree):
    if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "Extension":
        name = ast.literal_eval(call.args[0])
        kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("sources", "libraries")}
        srcs = " ".join("/build/src/" + s.split("/", 1)[1] for s in kw["sources"])
        libs = " ".join(f"-l{l}" for l in kw.get("libraries", []))
        out = name.rsplit(".", 1)[1] + suffix
        print(f"gcc -shared -fPIC -O2 -g0 -Wall -Wextra -Werror -std=gnu11 -I/build/py -I{pcap}/include {srcs} "
              f"-o /build/out/{out} -L{pcap}/lib -Wl,-rpath,{pcap}/lib {libs}")
EOF
log "compiling the C modules for glibc 2.31"
chroot "$ROOTFS" /bin/sh -e /build/compile.sh

# 4. the wheel: setuptools' metadata and Python files, the bullseye-built modules, then auditwheel
TOOLS=$CACHE/tools
if [ ! -x "$TOOLS/bin/auditwheel" ] || [ ! -x "$TOOLS/bin/twine" ]; then
  log "installing auditwheel, patchelf, twine and wheel into $TOOLS"
  $PY -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check 'auditwheel>=6' 'patchelf>=0.17' 'twine>=5' 'wheel>=0.43' 'build>=1'
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rm -f dist/ossensor-*
log "building the sdist and a plain wheel"
"$TOOLS/bin/python" -m build -q --sdist --outdir dist . >/dev/null
"$TOOLS/bin/python" -m build -q --wheel --outdir "$WORK/raw" . >/dev/null
RAW=$(ls "$WORK"/raw/ossensor-*.whl)
"$TOOLS/bin/wheel" unpack -d "$WORK/unpacked" "$RAW" >/dev/null
PKG=$(ls -d "$WORK"/unpacked/ossensor-*/)
for so in "$ROOTFS"/build/out/*.so; do
  cp "$so" "$PKG/ossensor/$(basename "$so")"
done
mkdir -p "$WORK/packed"
"$TOOLS/bin/wheel" pack -d "$WORK/packed" "$PKG" >/dev/null
log "auditwheel repair --plat $PLAT (bundles libpcap)"
PATH="$TOOLS/bin:$PATH" LD_LIBRARY_PATH="$ROOTFS$PCAP_PREFIX/lib" "$TOOLS/bin/auditwheel" repair --plat "$PLAT" -w dist "$WORK"/packed/ossensor-*.whl
"$TOOLS/bin/twine" check --strict dist/*
ls -l dist/
