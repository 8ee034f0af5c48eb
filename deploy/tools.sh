#!/usr/bin/env bash
# Build the pinned deployment tools (helm, kubeconform, docker-compose) and our two checkers (dockerfile-check,
# promql-check) from the Go module proxy into <repo>/.tools/bin.
#
# Why build instead of download: the only network this project may assume is a package registry, and the Go
# module proxy is one; release tarballs on get.helm.sh / GitHub are not. Why pin: `helm lint`/`template`
# behaviour and kubeconform's strictness change between releases, and a chart test must not float with them.
#
# Cached: a tool is rebuilt only when its binary is missing or reports another version (source hash for ours).
# Bounded: every download and build runs under `timeout` (TOOLS_TIMEOUT_S, default 900 s each), so a stalled
# proxy fails instead of hanging. Locked: concurrent runs (make tools, the chart tests) wait for each other.
#
# Usage: deploy/tools.sh            # build what is missing, print the binaries' paths and versions
#        TOOLS_DIR=/x deploy/tools.sh
set -euo pipefail

# helm v4: the Helm project ended v3 security fixes on 2026-11-11; charts with apiVersion v2 work on both.
HELM_VERSION="v4.3.1"
KUBECONFORM_VERSION="v0.8.0"
# The Compose CLI validates deploy/docker/docker-compose.yml (`docker-compose config`; it needs no engine).
# v5.6.0: the newest release whose go.mod accepts the Go 1.26.8 toolchain pinned here (v5.7.0 wants 1.26.10).
COMPOSE_VERSION="v5.6.0"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-${REPO_ROOT}/.tools}"
BIN_DIR="${TOOLS_DIR}/bin"
TOOLS_TIMEOUT_S="${TOOLS_TIMEOUT_S:-900}"
mkdir -p "${BIN_DIR}"
exec 8>"${TOOLS_DIR}/.lock"
flock -w "${TOOLS_TIMEOUT_S}" 8 || { echo "tools.sh: another tools.sh holds ${TOOLS_DIR}/.lock" >&2; exit 1; }

command -v go >/dev/null 2>&1 || { echo "tools.sh: go is required (https://go.dev/dl/)" >&2; exit 2; }

# A binary built with `go install` reports the version set by -ldflags below; anything else is rebuilt.
helm_version() { "${BIN_DIR}/helm" version --template '{{ .Version }}' 2>/dev/null || true; }
kubeconform_version() { "${BIN_DIR}/kubeconform" -v 2>/dev/null || true; }
compose_version() { "${BIN_DIR}/docker-compose" version --short 2>/dev/null || true; }

build() {  # build <name> <package@version> <ldflags>
  local name="$1" pkg="$2" ldflags="$3" started
  started=$(date +%s)
  echo "tools.sh: building ${name} (${pkg}) ..." >&2
  # CGO off: static binaries, no C toolchain needed. -trimpath: reproducible paths in the binary.
  if ! GOBIN="${BIN_DIR}" GOFLAGS="-buildvcs=false" CGO_ENABLED=0 \
      timeout "${TOOLS_TIMEOUT_S}" go install -trimpath -ldflags "${ldflags}" "${pkg}"; then
    echo "tools.sh: building ${name} failed or exceeded ${TOOLS_TIMEOUT_S}s" >&2
    exit 1
  fi
  echo "tools.sh: built ${name} in $(( $(date +%s) - started ))s" >&2
}

if [[ "$(helm_version)" != "${HELM_VERSION}" ]]; then
  build helm "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}" \
    "-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v4/internal/version.metadata="
fi
if [[ "$(kubeconform_version)" != "${KUBECONFORM_VERSION}" ]]; then
  build kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@${KUBECONFORM_VERSION}" \
    "-s -w -X main.version=${KUBECONFORM_VERSION}"
fi

# Compose's go.mod has `exclude` directives, which `go install pkg@version` refuses: build it as the main
# module from a writable copy of the module the proxy serves (what its own Makefile does).
build_compose() {
  local started src dir
  started=$(date +%s)
  echo "tools.sh: building docker-compose (github.com/docker/compose/v5@${COMPOSE_VERSION}) ..." >&2
  dir=$(timeout "${TOOLS_TIMEOUT_S}" go mod download -json "github.com/docker/compose/v5@${COMPOSE_VERSION}" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -n "${dir}" && -d "${dir}" ]] || { echo "tools.sh: downloading compose ${COMPOSE_VERSION} failed" >&2; exit 1; }
  src=$(mktemp -d "${TOOLS_DIR}/compose-src.XXXXXX")
  trap 'rm -rf "${src}"' EXIT
  cp -r "${dir}/." "${src}/" && chmod -R u+w "${src}"
  if ! (cd "${src}" && GOFLAGS="-buildvcs=false" CGO_ENABLED=0 timeout "${TOOLS_TIMEOUT_S}" go build -trimpath \
        -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=${COMPOSE_VERSION}" \
        -o "${BIN_DIR}/docker-compose" ./cmd); then
    echo "tools.sh: building docker-compose failed or exceeded ${TOOLS_TIMEOUT_S}s" >&2
    exit 1
  fi
  rm -rf "${src}"
  trap - EXIT
  echo "tools.sh: built docker-compose in $(( $(date +%s) - started ))s" >&2
}
if [[ "$(compose_version)" != "${COMPOSE_VERSION#v}" ]]; then
  build_compose
fi

# Our own small checkers, Go programs on upstream libraries (their sources live in this repository, so the cache
# key is a hash of the source instead of a release version):
#   dockerfile-check (deploy/docker/dockerfile-check): BuildKit's Dockerfile frontend and build checks, offline;
#   promql-check (deploy/helm/promql-check): Prometheus' PromQL parser, for the alert rules and documented queries.
build_local() {  # build_local <name> <source dir>; prints the source hash
  local name="$1" src="$2" hash started
  hash=$(cat "${src}/main.go" "${src}/go.mod" "${src}/go.sum" | sha256sum | cut -c1-16)
  if [[ ! -x "${BIN_DIR}/${name}" || "$(cat "${BIN_DIR}/.${name}.hash" 2>/dev/null)" != "${hash}" ]]; then
    started=$(date +%s)
    echo "tools.sh: building ${name} ..." >&2
    if ! (cd "${src}" && GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0 timeout "${TOOLS_TIMEOUT_S}" \
          go build -trimpath -ldflags "-s -w" -o "${BIN_DIR}/${name}" .) >&2; then
      echo "tools.sh: building ${name} failed or exceeded ${TOOLS_TIMEOUT_S}s" >&2
      exit 1
    fi
    echo "${hash}" > "${BIN_DIR}/.${name}.hash"
    echo "tools.sh: built ${name} in $(( $(date +%s) - started ))s" >&2
  fi
  echo "${hash}"
}
check_hash=$(build_local dockerfile-check "${REPO_ROOT}/deploy/docker/dockerfile-check")
promql_hash=$(build_local promql-check "${REPO_ROOT}/deploy/helm/promql-check")

# Fail loudly if what we built does not report the pinned version (e.g. an ldflags path changed upstream).
[[ "$(helm_version)" == "${HELM_VERSION}" ]] || { echo "tools.sh: helm reports '$(helm_version)'" >&2; exit 1; }
[[ "$(kubeconform_version)" == "${KUBECONFORM_VERSION}" ]] || {
  echo "tools.sh: kubeconform reports '$(kubeconform_version)'" >&2; exit 1; }

[[ "$(compose_version)" == "${COMPOSE_VERSION#v}" ]] || {
  echo "tools.sh: docker-compose reports '$(compose_version)'" >&2; exit 1; }

echo "helm ${BIN_DIR}/helm ${HELM_VERSION}"
echo "kubeconform ${BIN_DIR}/kubeconform ${KUBECONFORM_VERSION}"
echo "docker-compose ${BIN_DIR}/docker-compose ${COMPOSE_VERSION}"
echo "dockerfile-check ${BIN_DIR}/dockerfile-check ${check_hash}"
echo "promql-check ${BIN_DIR}/promql-check ${promql_hash}"
