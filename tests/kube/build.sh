#!/usr/bin/env bash
# Builds the Kubernetes control plane the end-to-end tests run against: kube-apiserver,
# kube-controller-manager and kube-scheduler v1.20.2 from Debian bookworm's `kubernetes` source
# package (with Debian's Go), plus etcd from Debian's `etcd-server`. See shared INFRA.md.
#
# The three binaries are cached under ${TUNERY_KUBE_CACHE:-~/.cache/tunery/kube}/v1.20.2/; when they are
# there, this script only checks that etcd is installed and exits. /etc/apt is left alone: the source
# package is fetched with a private apt config.
set -euo pipefail

VERSION=v1.20.2
SRC_DIR_NAME=kubernetes-1.20.5+really1.20.2
CACHE_ROOT=${TUNERY_KUBE_CACHE:-$HOME/.cache/tunery/kube}
CACHE=$CACHE_ROOT/$VERSION
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)

have_binaries() {
  for b in "${BINARIES[@]}"; do [ -x "$CACHE/bin/$b" ] || return 1; done
}

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "build.sh: installing ${missing[*]}"
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

if have_binaries && command -v etcd >/dev/null 2>&1; then
  echo "build.sh: Kubernetes $VERSION binaries cached in $CACHE/bin"
  exit 0
fi

apt_install etcd-server
if have_binaries; then
  echo "build.sh: Kubernetes $VERSION binaries cached in $CACHE/bin"
  exit 0
fi

apt_install golang-go rsync dpkg-dev make ca-certificates

mkdir -p "$CACHE_ROOT"
# One build at a time (tests may call this script while `make kube` runs).
exec 9>"$CACHE_ROOT/.build.lock"
flock 9
if have_binaries; then
  echo "build.sh: Kubernetes $VERSION binaries cached in $CACHE/bin"
  exit 0
fi

WORK=$(mktemp -d "$CACHE_ROOT/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# A private apt configuration that knows only bookworm's deb-src line.
APT="$WORK/apt"
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/sources.list.d" "$APT/preferences.d"
echo "deb-src http://deb.debian.org/debian bookworm main" >"$APT/sources.list"
cat >"$APT/apt.conf" <<CONF
Dir::Etc::SourceList "$APT/sources.list";
Dir::Etc::SourceParts "$APT/sources.list.d";
Dir::Etc::Preferences "$APT/preferences.d";
Dir::State::Lists "$APT/lists";
Dir::Cache "$APT/cache";
APT::Sandbox::User "root";
CONF
export APT_CONFIG="$APT/apt.conf"
apt-get update -qq
(cd "$WORK" && apt-get source -qq kubernetes)
unset APT_CONFIG

cd "$WORK/$SRC_DIR_NAME"
echo "build.sh: building ${BINARIES[*]} (several minutes)"
export GOFLAGS=${GOFLAGS:-} GOCACHE="$WORK/gocache" GOPATH="$WORK/gopath"
CGO_ENABLED=0 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler"

mkdir -p "$CACHE/bin.tmp"
for b in "${BINARIES[@]}"; do cp "_output/bin/$b" "$CACHE/bin.tmp/$b"; done
rm -rf "$CACHE/bin"
mv "$CACHE/bin.tmp" "$CACHE/bin"
echo "build.sh: Kubernetes $VERSION binaries cached in $CACHE/bin"
