#!/usr/bin/env bash
# Build the local control-plane tools from source through the Go module proxy and cache them outside
# the repository (default ~/.cache/minimax-m1, override with MINIMAX_M1_TOOLS_DIR):
#
#   bin/helm                     helm.sh/helm/v3/cmd/helm
#   bin/etcd                     go.etcd.io/etcd/server/v3 (etcdmain behind a three-line main)
#   bin/kube-apiserver           k8s.io/kubernetes/cmd/..., with every staging module pinned
#   bin/kube-scheduler             by a replace directive to the matching k8s.io/<name> v0.x
#   bin/kube-controller-manager
#   bin/kwok                     sigs.k8s.io/kwok/cmd/kwok (fake nodes and pod lifecycles)
#   kwok/stages.yaml             kwok's standard node and pod Stages, from its module
#   bin/ray-operator             github.com/ray-project/kuberay/ray-operator
#   crds/ray.io_*.yaml           the KubeRay CRDs shipped in the operator module (config/crd/bases)
#
# Usage: scripts/build_cluster_tools.sh [TOOL ...]     (TOOL: helm etcd kubernetes kwok kuberay)
# Idempotent: a tool whose stamp matches its pinned version is skipped, so a cached run takes
# well under a second. Builds run under `nice` with one package compiled at a time
# (MINIMAX_M1_BUILD_JOBS to change) so a 2-core machine stays usable.
set -euo pipefail

HELM_VERSION=v3.19.5
ETCD_VERSION=v3.6.16
KUBERNETES_VERSION=v1.37.2  # staging modules are pinned to v0.37.2
KWOK_VERSION=v0.8.0
KUBERAY_VERSION=v1.5.0

CACHE="${MINIMAX_M1_TOOLS_DIR:-$HOME/.cache/minimax-m1}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
STAMPS="$CACHE/stamps"
mkdir -p "$BIN" "$SRC" "$STAMPS" "$CACHE/crds"

export GOFLAGS="-mod=mod -buildvcs=false -trimpath -p=${MINIMAX_M1_BUILD_JOBS:-1}"
export CGO_ENABLED=0
GO="nice -n 10 go"
LDFLAGS="-s -w"

log() { echo "[cluster-tools] $*" >&2; }

command -v go >/dev/null || { log "go is not installed: cannot build the cluster tools"; exit 1; }

# is_current NAME VERSION FILE...: the stamp says VERSION and every FILE exists.
is_current() {
  local name=$1 version=$2; shift 2
  [ "$(cat "$STAMPS/$name" 2>/dev/null)" = "$version" ] || return 1
  local f; for f in "$@"; do [ -s "$f" ] || return 1; done
}

stamp() { echo "$2" > "$STAMPS/$1"; }

# timed NAME CMD...: run CMD and log how long it took (the build times go into the docs).
timed() {
  local name=$1 start=$SECONDS; shift
  "$@"
  log "$name built in $((SECONDS - start)) s"
}

# wrapper_module DIR: a throwaway main module in which a dependency's commands can be built.
wrapper_module() {
  local dir=$1
  rm -rf "$dir" && mkdir -p "$dir"
  printf 'module minimax-m1/cluster-tools\n\ngo %s\n' "$(go env GOVERSION | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')" > "$dir/go.mod"
}

build_helm() {
  [ -x "$BIN/helm" ] && grep -q "^$HELM_VERSION+k8s" "$STAMPS/helm" 2>/dev/null && return 0
  log "building helm $HELM_VERSION"
  # helm's own Makefile stamps the Kubernetes version it was built against (the default for
  # `helm template` and `helm lint`) from its client-go; without it helm assumes v1.20.
  local gomod minor
  gomod="$(cd "$SRC" && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -nE 's/^\s*"GoMod": "(.*)",?$/\1/p')"
  minor="$(sed -nE 's#^\s*k8s\.io/client-go v0\.([0-9]+)\..*#\1#p' "$gomod" | head -n 1)"
  local x="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  local pkg; for pkg in pkg/chartutil pkg/lint/rules; do
    x="$x -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$minor"
  done
  GOBIN="$BIN" timed helm $GO install -ldflags "$LDFLAGS $x" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  stamp helm "$HELM_VERSION+k8s1.$minor"
}

build_etcd() {
  is_current etcd "$ETCD_VERSION" "$BIN/etcd" && return 0
  log "building etcd $ETCD_VERSION"
  local dir="$SRC/etcd"
  wrapper_module "$dir"
  cat > "$dir/main.go" <<'EOF'
// The etcd server: the library's own entry point behind a main package.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (cd "$dir" && $GO get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && $GO mod tidy &&
    timed etcd $GO build -ldflags "$LDFLAGS" -o "$BIN/etcd" .)
  stamp etcd "$ETCD_VERSION"
}

build_kubernetes() {
  local cmds=(kube-apiserver kube-scheduler kube-controller-manager)
  is_current kubernetes "$KUBERNETES_VERSION+version" "${cmds[@]/#/$BIN/}" && return 0
  log "building ${cmds[*]} $KUBERNETES_VERSION"
  local dir="$SRC/kubernetes" staging="v0.${KUBERNETES_VERSION#v1.}"
  wrapper_module "$dir"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging/...
  # paths, which only apply inside its own repository. Pin each one to the published v0.x here.
  local gomod modules
  gomod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -nE 's/^\s*"GoMod": "(.*)",?$/\1/p')"
  modules="$(sed -nE 's#^\s*(k8s\.io/[a-z0-9-]+) => \./staging/src/.*#\1#p' "$gomod")"
  [ -n "$modules" ] || { log "no staging replace directives found in $gomod"; return 1; }
  {
    echo; echo "replace ("
    local m; for m in $modules; do echo "	$m => $m $staging"; done
    echo ")"
  } >> "$dir/go.mod"
  local pkgs=() c; for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  # What the release build stamps (hack/lib/version.sh); clients such as helm check it.
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local x="" pkg; for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x="$x -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  (cd "$dir" && $GO get "k8s.io/kubernetes@$KUBERNETES_VERSION" &&
    timed kubernetes $GO build -ldflags "$LDFLAGS $x" -o "$BIN/" "${pkgs[@]}")
  stamp kubernetes "$KUBERNETES_VERSION+version"
}

build_kwok() {
  is_current kwok "$KWOK_VERSION" "$BIN/kwok" "$CACHE/kwok/stages.yaml" && return 0
  log "building kwok $KWOK_VERSION"
  GOBIN="$BIN" timed kwok $GO install -ldflags "$LDFLAGS" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # kwok runs node and pod lifecycles from Stage objects; its module ships the standard "fast"
  # set (nodes become Ready and keep a heartbeat, pods become Ready, complete and get deleted).
  local dir
  dir="$(cd "$SRC" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -nE 's/^\s*"Dir": "(.*)",?$/\1/p')"
  mkdir -p "$CACHE/kwok"
  local f; for f in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready \
    pod/fast/pod-complete pod/fast/pod-delete; do
    echo "---"; cat "$dir/kustomize/stage/$f.yaml"
  done > "$CACHE/kwok/stages.yaml"
  stamp kwok "$KWOK_VERSION"
}

build_kuberay() {
  is_current kuberay "$KUBERAY_VERSION" "$BIN/ray-operator" "$CACHE/crds/ray.io_rayservices.yaml" && return 0
  log "building the KubeRay operator $KUBERAY_VERSION"
  local mod="github.com/ray-project/kuberay/ray-operator"
  GOBIN="$BIN" timed kuberay $GO install -ldflags "$LDFLAGS" "$mod@$KUBERAY_VERSION"
  local dir
  dir="$(cd "$SRC" && go mod download -json "$mod@$KUBERAY_VERSION" | sed -nE 's/^\s*"Dir": "(.*)",?$/\1/p')"
  install -m 0644 "$dir"/config/crd/bases/ray.io_*.yaml "$CACHE/crds/"
  stamp kuberay "$KUBERAY_VERSION"
}

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(helm etcd kubernetes kwok kuberay)
status=0
for tool in "${tools[@]}"; do
  case "$tool" in
    helm | etcd | kubernetes | kwok | kuberay) "build_$tool" || { log "FAILED: $tool"; status=1; } ;;
    *) log "unknown tool: $tool"; exit 2 ;;
  esac
done
[ "$status" = 0 ] && log "tools ready in $BIN"
exit "$status"
