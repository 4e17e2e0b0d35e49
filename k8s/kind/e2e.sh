#!/usr/bin/env bash
# End-to-end on kind, for machines with Docker: create the cluster, build and load the image,
# install the KubeRay operator, install the chart with the CPU demo values, run the SDK smoke test.
#
#   k8s/kind/e2e.sh               # everything, then delete the cluster
#   KEEP_CLUSTER=1 k8s/kind/e2e.sh
#
# Needs: docker, kind, kubectl, helm (v3). Settings: CLUSTER, IMAGE, NAMESPACE, RELEASE,
# KUBERAY_VERSION, TIMEOUT.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER:-minimax-m1}"
IMAGE="${IMAGE:-minimax-m1:dev}"
NAMESPACE="${NAMESPACE:-minimax-m1}"
RELEASE="${RELEASE:-m1}"
KUBERAY_VERSION="${KUBERAY_VERSION:-1.5.0}"
TIMEOUT="${TIMEOUT:-20m}"
CONTEXT="kind-$CLUSTER"

log() { echo "[e2e] $*" >&2; }
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is not installed" >&2; exit 2; }
done

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    log "failed; state of namespace $NAMESPACE:"
    kubectl --context "$CONTEXT" -n "$NAMESPACE" get rayservice,raycluster,pods -o wide || true
  fi
  if [ "${KEEP_CLUSTER:-0}" != 1 ]; then
    log "deleting cluster $CLUSTER (KEEP_CLUSTER=1 keeps it)"
    kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$rc"
}
trap cleanup EXIT

if kind get clusters | grep -qx "$CLUSTER"; then
  log "reusing kind cluster $CLUSTER"
else
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config k8s/kind/cluster.yaml --wait 120s
fi

log "building $IMAGE"
docker build -f k8s/Dockerfile -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "installing the KubeRay operator $KUBERAY_VERSION"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ >/dev/null
helm repo update kuberay >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --kube-context "$CONTEXT" --namespace kuberay-system --create-namespace --wait --timeout 5m

log "installing the chart (CPU demo values)"
kubectl --context "$CONTEXT" create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl --context "$CONTEXT" apply -f -
# The smoke test's API key; the demo values export it to the gateway and the test pod.
if ! kubectl --context "$CONTEXT" -n "$NAMESPACE" get secret minimax-m1-demo-key >/dev/null 2>&1; then
  kubectl --context "$CONTEXT" -n "$NAMESPACE" create secret generic minimax-m1-demo-key \
    --from-literal=api-key="mm1_$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
fi
repository="${IMAGE%:*}"
tag="${IMAGE##*:}"
helm upgrade --install "$RELEASE" helm/minimax-m1 --kube-context "$CONTEXT" --namespace "$NAMESPACE" \
  -f helm/minimax-m1/ci/cpu-demo-values.yaml --set image.repository="$repository" --set image.tag="$tag" \
  --set image.pullPolicy=Never --wait --timeout "$TIMEOUT"

log "waiting for the RayService to be ready"
rayservice="$(kubectl --context "$CONTEXT" -n "$NAMESPACE" get rayservice \
  -l app.kubernetes.io/instance="$RELEASE" -o jsonpath='{.items[0].metadata.name}')"
kubectl --context "$CONTEXT" -n "$NAMESPACE" wait --for=condition=Ready "rayservice/$rayservice" --timeout "$TIMEOUT"

log "running the SDK smoke test (helm test)"
helm test "$RELEASE" --kube-context "$CONTEXT" --namespace "$NAMESPACE" --logs --timeout 10m
log "passed"
