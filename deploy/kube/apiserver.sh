#!/usr/bin/env bash
# A real Kubernetes API server (with its etcd) on 127.0.0.1, for server-side dry runs of the rendered chart.
#
# Why: `helm lint` and kubeconform check manifests against schemas; the API server also runs defaulting,
# validation (cross-field rules such as "Recreate allows no rollingUpdate"), strict field validation and CEL
# rules of CRDs. Nothing else catches that class of defect offline. The binaries are built from the Go module
# proxy (the only network this project may assume) at the versions pinned by deploy/kube/go.mod: Kubernetes
# v1.35.4, the oldest minor still supported upstream (the same pin as the vendored kubeconform schemas), and the
# etcd that release is tested with. Debian's etcd-server is 3.4, older than v1.35 supports.
#
# Cached: built once into <repo>/.tools/bin (the Go build cache makes a rebuild after a pin change incremental).
# Bounded: every build and wait runs under `timeout`. No controllers, scheduler or kubelet run: objects are
# validated and stored (or, with --dry-run=server, only validated), never acted on.
#
# Usage: deploy/kube/apiserver.sh build          # build what is missing; print the binaries' paths
#        deploy/kube/apiserver.sh up DIR         # start etcd + kube-apiserver, write DIR/kubeconfig, wait ready
#        deploy/kube/apiserver.sh down DIR       # stop what `up DIR` started (by PID)
set -euo pipefail

KUBE_VERSION="v1.35.4"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${HERE}/../.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-${REPO_ROOT}/.tools}"
BIN_DIR="${TOOLS_DIR}/bin"
BUILD_TIMEOUT_S="${KUBE_BUILD_TIMEOUT_S:-2400}"
READY_TIMEOUT_S="${KUBE_READY_TIMEOUT_S:-120}"

etcd_version() { sed -n 's/^\s*go.etcd.io\/etcd\/server\/v3 \(v[0-9.]*\).*/\1/p' "${HERE}/go.mod" | head -1; }

built_version() {  # built_version <binary>: the version a built binary reports, empty if none
  case "$1" in
    kube-apiserver) "${BIN_DIR}/kube-apiserver" --version 2>/dev/null | awk '{print $2}' ;;
    kubectl) "${BIN_DIR}/kubectl" version --client -o json 2>/dev/null \
               | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | head -1 ;;
    etcd) "${BIN_DIR}/etcd" --version 2>/dev/null | sed -n 's/^etcd Version: \(.*\)/v\1/p' ;;
  esac
}

build_one() {  # build_one <name> <package> <want version>
  local name="$1" pkg="$2" want="$3" started ldflags="-s -w"
  [[ "$(built_version "${name}")" == "${want}" ]] && return 0
  if [[ "${name}" != etcd ]]; then
    local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X ${p}.gitVersion=${KUBE_VERSION} -X ${p}.gitMajor=1 -X ${p}.gitMinor=${minor}"
      ldflags+=" -X ${p}.gitTreeState=clean"
    done
  fi
  started=$(date +%s)
  echo "apiserver.sh: building ${name} ${want} (first time: 10-20 min on 2 cores) ..." >&2
  # CGO off: static binaries, no C toolchain. GOFLAGS=-mod=mod would let go.sum drift: keep it read-only.
  if ! (cd "${HERE}" && CGO_ENABLED=0 GOFLAGS="-buildvcs=false -mod=readonly" \
        timeout "${BUILD_TIMEOUT_S}" go build -trimpath -ldflags "${ldflags}" -o "${BIN_DIR}/${name}" "${pkg}"); then
    echo "apiserver.sh: building ${name} failed or exceeded ${BUILD_TIMEOUT_S}s" >&2
    exit 1
  fi
  echo "apiserver.sh: built ${name} in $(( $(date +%s) - started ))s" >&2
}

build() {
  command -v go >/dev/null 2>&1 || { echo "apiserver.sh: go is required (https://go.dev/dl/)" >&2; exit 2; }
  mkdir -p "${BIN_DIR}"
  exec 9>"${TOOLS_DIR}/.kube.lock"
  flock -w "${BUILD_TIMEOUT_S}" 9 || { echo "apiserver.sh: another build holds ${TOOLS_DIR}/.kube.lock" >&2; exit 1; }
  build_one etcd go.etcd.io/etcd/server/v3 "$(etcd_version)"
  build_one kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "${KUBE_VERSION}"
  build_one kubectl k8s.io/kubernetes/cmd/kubectl "${KUBE_VERSION}"
  for b in etcd kube-apiserver kubectl; do echo "${b} ${BIN_DIR}/${b} $(built_version "${b}")"; done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

up() {
  local dir="$1"
  mkdir -p "${dir}/etcd" "${dir}/certs"
  dir="$(cd "${dir}" && pwd)"
  local etcd_port peer_port api_port token
  etcd_port="$(free_port)"; peer_port="$(free_port)"; api_port="$(free_port)"
  token="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
  # The service-account signing key the API server insists on (no tokens are ever issued here).
  openssl genrsa -out "${dir}/certs/sa.key" 2048 2>/dev/null
  openssl rsa -in "${dir}/certs/sa.key" -pubout -out "${dir}/certs/sa.pub" 2>/dev/null
  printf '%s,dfmod-test,dfmod-test,"system:masters"\n' "${token}" > "${dir}/tokens.csv"
  chmod 600 "${dir}/tokens.csv" "${dir}/certs/sa.key"

  "${BIN_DIR}/etcd" --name dfmod-test --data-dir "${dir}/etcd" \
    --listen-client-urls "http://127.0.0.1:${etcd_port}" --advertise-client-urls "http://127.0.0.1:${etcd_port}" \
    --listen-peer-urls "http://127.0.0.1:${peer_port}" --initial-advertise-peer-urls "http://127.0.0.1:${peer_port}" \
    --initial-cluster "dfmod-test=http://127.0.0.1:${peer_port}" --log-level warn \
    > "${dir}/etcd.log" 2>&1 &
  echo $! > "${dir}/etcd.pid"

  "${BIN_DIR}/kube-apiserver" --etcd-servers "http://127.0.0.1:${etcd_port}" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "${api_port}" \
    --cert-dir "${dir}/certs" --token-auth-file "${dir}/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "${dir}/certs/sa.pub" \
    --service-account-signing-key-file "${dir}/certs/sa.key" --service-cluster-ip-range 10.96.0.0/16 \
    --allow-privileged=false --v=1 \
    > "${dir}/apiserver.log" 2>&1 &
  echo $! > "${dir}/apiserver.pid"

  cat > "${dir}/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dfmod-test
  cluster: {server: "https://127.0.0.1:${api_port}", insecure-skip-tls-verify: true}
users:
- name: dfmod-test
  user: {token: "${token}"}
contexts:
- name: dfmod-test
  context: {cluster: dfmod-test, user: dfmod-test}
current-context: dfmod-test
EOF
  chmod 600 "${dir}/kubeconfig"
  local deadline=$(( $(date +%s) + READY_TIMEOUT_S ))
  until KUBECONFIG="${dir}/kubeconfig" timeout 10 "${BIN_DIR}/kubectl" get --raw /readyz >/dev/null 2>&1; do
    for p in etcd apiserver; do
      if ! kill -0 "$(cat "${dir}/${p}.pid")" 2>/dev/null; then
        echo "apiserver.sh: ${p} exited; last lines of ${dir}/${p}.log:" >&2; tail -20 "${dir}/${p}.log" >&2
        down "${dir}"; exit 1
      fi
    done
    if (( $(date +%s) > deadline )); then
      echo "apiserver.sh: the API server was not ready within ${READY_TIMEOUT_S}s; see ${dir}/apiserver.log" >&2
      down "${dir}"; exit 1
    fi
    sleep 1
  done
  echo "KUBECONFIG=${dir}/kubeconfig"
}

down() {
  local dir="$1" pid
  for p in apiserver etcd; do  # the reverse of up
    [[ -f "${dir}/${p}.pid" ]] || continue
    pid="$(cat "${dir}/${p}.pid")"
    kill "${pid}" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.2; done
    kill -9 "${pid}" 2>/dev/null || true
    rm -f "${dir}/${p}.pid"
  done
}

case "${1:-}" in
  build) build ;;
  up) [[ -n "${2:-}" ]] || { echo "usage: $0 up DIR" >&2; exit 2; }; build >/dev/null; up "$2" ;;
  down) [[ -n "${2:-}" ]] || { echo "usage: $0 down DIR" >&2; exit 2; }; down "$2" ;;
  *) echo "usage: $0 build | up DIR | down DIR" >&2; exit 2 ;;
esac
