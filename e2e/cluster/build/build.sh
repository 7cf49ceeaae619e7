#!/usr/bin/env bash
# Builds the local cluster's binaries from the Go module proxy into a cache outside the repo:
#   ${AMBIENT_CLUSTER_CACHE:-$HOME/.cache/ambient-cluster}/<k8s-version>/bin
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubectl (this module),
# etcd (./etcd wrapper module), coredns and helm (`go install pkg@version`: no replace directives).
# A stamp keyed on this recipe's files makes later runs a no-op; each binary is also skipped
# when already present, so an interrupted cold build resumes where it stopped.
# Timings and module-download size of every run are appended to <cache>/<k8s-version>/build.log.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION=v1.33.13
ETCD_VERSION=v3.5.35
COREDNS_VERSION=v1.12.4
HELM_VERSION=v3.18.6

CACHE="${AMBIENT_CLUSTER_CACHE:-$HOME/.cache/ambient-cluster}/${K8S_VERSION}"
BIN="${CACHE}/bin"
STAMP="${BIN}/.stamp"
mkdir -p "${BIN}"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}"

recipe_hash() {
  cat "${HERE}/build.sh" "${HERE}/go.mod" "${HERE}/go.sum" "${HERE}/etcd/go.mod" "${HERE}/etcd/go.sum" \
    2>/dev/null | sha256sum | cut -d' ' -f1
}
if [[ -f "${STAMP}" && "$(cat "${STAMP}")" == "$(recipe_hash)" && "${1:-}" != "--force" ]]; then
  echo "cluster binaries up to date in ${BIN}"
  exit 0
fi

log() { echo "[build $(date -u +%H:%M:%S)] $*" | tee -a "${CACHE}/build.log"; }
modcache="$(go env GOMODCACHE)"
dl_size() { du -sb "${modcache}/cache/download" 2>/dev/null | cut -f1 || echo 0; }
t0=$(date +%s); dl0=$(dl_size)
log "go: $(go version); GOMAXPROCS/cores: $(nproc); cache: ${BIN}"

# The Kubernetes components read their version from these variables; unset, they report
# v0.0.0-master+$Format:%H$, which breaks version checks in clients and in Helm's kubeVersion.
commit=0000000000000000000000000000000000000000
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
kv_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kv_flags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
  kv_flags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.gitCommit=${commit} -X ${pkg}.buildDate=${build_date}"
done

step() {  # step <name...> -- <command...>: runs the command unless every named binary exists
  local names=() ; while [[ "$1" != "--" ]]; do names+=("$1"); shift; done; shift
  local missing=0
  for n in "${names[@]}"; do [[ -x "${BIN}/${n}" ]] || missing=1; done
  if [[ ${missing} == 0 ]]; then log "skip ${names[*]} (present)"; return; fi
  local s=$(date +%s)
  log "building ${names[*]} ..."
  "$@"
  log "built ${names[*]} in $(( $(date +%s) - s ))s"
}

cd "${HERE}"
step kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl -- bash -c "
  set -e
  [[ -f go.sum ]] || { echo 'resolving modules (go mod tidy)'; go mod tidy; }
  go mod download
  echo 'compiling (this is the long part)'
  go build -trimpath -ldflags '-s -w ${kv_flags}' -o '${BIN}/' \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl"

step etcd -- bash -c "
  set -e; cd etcd
  [[ -f go.sum ]] || go mod tidy
  go build -trimpath -ldflags '-s -w' -o '${BIN}/etcd' go.etcd.io/etcd/server/v3"

step coredns -- env GOBIN="${BIN}" go install -trimpath \
  -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" \
  "github.com/coredns/coredns@${COREDNS_VERSION}"

step helm -- env GOBIN="${BIN}" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"

# version report (no `| head`: with pipefail a SIGPIPE'd writer would fail the build)
log "versions: $("${BIN}/kube-apiserver" --version) | etcd $("${BIN}/etcd" --version | sed -n 1p) |" \
  "$("${BIN}/coredns" -version | tr '\n' ' ')| helm $("${BIN}/helm" version --short)"

recipe_hash > "${STAMP}"
dl1=$(dl_size)
log "done in $(( $(date +%s) - t0 ))s; module downloads this run: $(( (dl1 - dl0) / 1048576 )) MiB"
