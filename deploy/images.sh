#!/usr/bin/env bash
# Build the dfmod images (worker, and opt-in the training image) with the repository's Dockerfiles.
#
#   deploy/images.sh engine          install/configure a container engine (Docker if its daemon answers, else podman)
#   deploy/images.sh bases           make the base images from Debian packages when the registry ones cannot be pulled
#   deploy/images.sh build [worker|train|all]   build (default: worker), then print sizes and what dominates them
#   deploy/images.sh sizes [IMAGE...]            print an image's size and its largest layers and directories
#
# With registry access (Docker Hub, NGC) the Dockerfiles' defaults are used unchanged. Without it (a build farm
# behind a proxy, this CI), `bases` makes equivalents with mmdebstrap from the apt mirror and passes them through the
# Dockerfiles' ARGs: PYTHON_IMAGE (Debian bookworm's python3.11, like python:3.11-slim) and CUDA_IMAGE (plain
# Debian bookworm: proves the training build, but has no CUDA compat libraries or NVIDIA_REQUIRE_CUDA).
# Environment: DFMOD_ENGINE=docker|podman, DFMOD_BASES=registry|debian|auto (default auto), DFMOD_IMAGE_TAG
# (default 0.1.0), DFMOD_IMAGES_CACHE (default ~/.cache/dfmod-images: rootfs tarballs, reused for 7 days).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${DFMOD_IMAGE_TAG:-0.1.0}"
CACHE="${DFMOD_IMAGES_CACHE:-$HOME/.cache/dfmod-images}"
MIRROR="${DFMOD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
PY_BASE="localhost/dfmod-base/python:3.11-bookworm"
CUDA_STANDIN="localhost/dfmod-base/debian:bookworm"
# The host's CA bundle and pip configuration, mounted read-only into RUN steps (a proxy with its own CA).
CA_BUNDLE="${DFMOD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
PIP_CONF="${DFMOD_PIP_CONF:-/etc/pip.conf}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

die() { echo "images: $*" >&2; exit 1; }

engine() {
  # Docker when its daemon answers, else podman; DFMOD_ENGINE overrides.
  if [ -n "${DFMOD_ENGINE:-}" ]; then echo "$DFMOD_ENGINE"; return; fi
  if command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then echo docker; return; fi
  if command -v podman >/dev/null 2>&1; then echo podman; return; fi
  echo none
}

ulimits() {
  # "NOFILE NPROC" for containers: the host's hard limits, nproc capped at 32768 (conmon's own limit here).
  local nofile nproc
  nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
  [ "$nofile" = unlimited ] && nofile=1048576
  { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
  echo "$nofile $nproc"
}

setup_engine() {
  [ "$(engine)" = docker ] && { echo "images: using Docker ($(docker --version))"; return; }
  local pkgs=(podman runc fuse-overlayfs netavark aardvark-dns iptables mmdebstrap uidmap) missing=()
  for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "no Docker daemon and no apt-get: install podman yourself"
    echo "images: installing Debian packages: ${missing[*]}"
    timeout 600 $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # runc: crun refuses hybrid cgroup v1/v2 hosts. Ulimits at or below what the engine may set: root may lack
  # CAP_SYS_RESOURCE (as here), and podman's defaults (1048576 open files) then fail every container. conmon runs
  # with at most 32768 processes here, so nproc is capped there. podman 4.3 reads no containers.conf.d: the main file.
  local nofile nproc conf=/etc/containers/containers.conf want
  read -r nofile nproc <<<"$(ulimits)"
  want="$(printf '%s\n' "# written by dfmod deploy/images.sh (delete this line to keep your own edits)" "[containers]" \
    "default_ulimits = [\"nofile=${nofile}:${nofile}\", \"nproc=${nproc}:${nproc}\"]" \
    "[engine]" "runtime = \"runc\"" "cgroup_manager = \"cgroupfs\"" "events_logger = \"file\"" \
    "[network]" "network_backend = \"netavark\"")"
  if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
    if [ -s "$conf" ] && ! head -1 "$conf" | grep -q 'written by dfmod'; then
      die "$conf is yours: add runtime=\"runc\" and default_ulimits nofile=$nofile, nproc=$nproc there yourself"
    fi
    $SUDO mkdir -p "$(dirname "$conf")"
    echo "$want" | $SUDO tee "$conf" >/dev/null
    echo "images: wrote $conf"
  fi
  timeout 60 podman info >/dev/null || die "podman does not start: see 'podman info'"
  if have_image "$CUDA_STANDIN"; then
    timeout 60 podman run --rm --network none "$CUDA_STANDIN" true 2>/dev/null \
      || die "podman cannot start a container: try 'podman run --rm $CUDA_STANDIN true'"
  fi
  echo "images: using $(podman --version)"
}

have_image() { timeout 60 "$(engine)" image inspect "$1" >/dev/null 2>&1; }

REGISTRY=""
registry_reachable() {
  # One pull of the real worker base decides (once per run); a registry that answers gets the Dockerfiles' defaults.
  if [ -z "$REGISTRY" ]; then
    case "${DFMOD_BASES:-auto}" in
      registry) REGISTRY=yes ;; debian) REGISTRY=no ;;
      *) if timeout 60 "$(engine)" pull -q docker.io/library/python:3.11-slim-trixie >/dev/null 2>&1
         then REGISTRY=yes; else REGISTRY=no; fi ;;
    esac
  fi
  [ "$REGISTRY" = yes ]
}

# As in the official Debian images: apt keeps no package caches in layers (a Dockerfile's `apt-get update` would
# otherwise leave ~80 MB of /var/cache/apt/*.bin behind), and installs no Recommends.
APT_CLEAN='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }; APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; }; Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache ""; APT::Install-Recommends "false";'

make_base() {
  # make_base TAG NAME [PACKAGES]: a minbase Debian rootfs from the apt mirror, cached as a tarball, imported.
  local tag="$1" name="$2" include="${3:-}" eng tarball
  eng="$(engine)"; tarball="$CACHE/$name.tar"
  # The label names the recipe: an image made by an older recipe of this script is made again.
  if [ "$("$eng" image inspect --format '{{index .Config.Labels "dfmod.base"}}' "$tag" 2>/dev/null)" = "$name" ]; then
    echo "images: $tag present"; return
  fi
  mkdir -p "$CACHE"
  if [ ! -s "$tarball" ] || [ -n "$(find "$tarball" -mtime +7 2>/dev/null)" ]; then
    command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap missing: run deploy/images.sh engine"
    echo "images: building $name from $MIRROR ($SUITE, minbase${include:+, + $include})"
    local t0=$SECONDS
    # dpkg excludes as in the slim images: no docs or man pages; apt lists emptied (Dockerfiles run apt-get update).
    timeout 900 mmdebstrap --quiet --variant=minbase --format=tar ${include:+--include="$include"} \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
      --customize-hook="printf '%s\n' '$APT_CLEAN' > \"\$1/etc/apt/apt.conf.d/docker-clean\"" \
      "$SUITE" "$tarball.part" "$MIRROR" || { rm -f "$tarball.part"; die "mmdebstrap of $name failed"; }
    mv "$tarball.part" "$tarball"
    echo "images: $name rootfs in $((SECONDS - t0)) s"
  fi
  # python:3.11-slim puts `python` on PATH; python-is-python3 does the same here.
  timeout 300 "$eng" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' --change "LABEL dfmod.base=$name" "$tarball" "$tag" >/dev/null 2>&1 || die "import of $tarball failed"
  echo "images: imported $tag"
}

setup_bases() {
  if registry_reachable; then echo "images: registry reachable: using the Dockerfiles' default bases"; return; fi
  make_base "$PY_BASE" python3.11-bookworm-v2 "python3,python3-venv,python-is-python3,ca-certificates"
  # ca-certificates as in nvidia/cuda: the host's bundle is mounted over its ca-certificates.crt during RUN steps,
  # so a Dockerfile that installs the package there would fail in its postinst ("Device or resource busy").
  make_base "$CUDA_STANDIN" debian-bookworm-v3 "ca-certificates"
}

base_args() {
  # The ARGs to pass: nothing when the registry answers, else the local bases.
  if have_image "$PY_BASE" && ! registry_reachable; then
    echo "--build-arg PYTHON_IMAGE=$PY_BASE --build-arg CUDA_IMAGE=$CUDA_STANDIN"
  fi
}

build_one() {
  local which="$1" eng args t0=$SECONDS
  eng="$(engine)"
  [ "$eng" = none ] && die "no container engine: run deploy/images.sh engine (podman from apt) or start Docker"
  args="$(base_args)"
  local mounts=()
  if [ "$eng" = podman ]; then
    # podman keeps HEALTHCHECK only in docker format; RUN steps see the host's CA and pip configuration.
    mounts+=(--format docker)
    [ -f "$CA_BUNDLE" ] && mounts+=(-v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
    [ -f "$PIP_CONF" ] && mounts+=(-v "$PIP_CONF:/etc/pip.conf:ro")
    # Builds ignore default_ulimits: the same limits, explicitly.
    local nofile nproc; read -r nofile nproc <<<"$(ulimits)"
    mounts+=(--network host --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
  fi
  echo "images: building dfmod-$which:$TAG with $eng ${args:-(default bases)}"
  # shellcheck disable=SC2086 # args is a list of words on purpose
  timeout 3600 "$eng" build "${mounts[@]}" $args -f "$REPO/deploy/docker/$which.Dockerfile" \
    -t "dfmod-$which:$TAG" "$REPO" || die "build of dfmod-$which failed"
  echo "images: dfmod-$which:$TAG built in $((SECONDS - t0)) s"
  sizes "dfmod-$which:$TAG"
}

sizes() {
  # Size, largest layers, and the largest directories of the image's filesystem (what dominates it).
  local eng image
  eng="$(engine)"
  for image in "$@"; do
    echo "== $image: $("$eng" image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
    "$eng" history --format '{{.Size}}\t{{.CreatedBy}}' "$image" | sort -h -r | head -4 | cut -c1-140 | sed 's/^/   layer /'
    "$eng" run --rm --no-healthcheck --network none --user 0 --entrypoint /bin/sh "$image" -c \
      'du -x -m -s /opt/dfmod/lib/python3*/site-packages/* /usr/lib/x86_64-linux-gnu/* /usr/lib/python3* \
         /usr/share/* /usr/local/lib/python3*/site-packages/* 2>/dev/null | sort -n -r | awk "\$1 >= 8" | head -16' \
      | sed 's/^/   MB /'
  done
}

case "${1:-build}" in
  engine) setup_engine ;;
  bases) setup_bases ;;
  build)
    setup_engine; setup_bases
    case "${2:-worker}" in
      worker|train) build_one "${2:-worker}" ;;
      all) build_one worker; build_one train ;;
      *) die "unknown image ${2}: worker, train or all" ;;
    esac ;;
  sizes) shift; sizes "$@" ;;
  *) die "usage: deploy/images.sh engine|bases|build [worker|train|all]|sizes IMAGE..." ;;
esac
