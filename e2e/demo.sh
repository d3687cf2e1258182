#!/usr/bin/env bash
# `make demo`: the operator installed with its Helm chart, every example in examples/ run,
# and a table of the results.
#
#   1. The cluster: $KUBECONFIG if it names a cluster of your choosing; otherwise the local
#      one (.cluster/), brought up with e2e/cluster/up.sh if it is not running (KIND=1 for kind).
#   2. The images (local cluster or kind): e2e/cluster/images.sh, a no-op when nothing changed.
#   3. helm upgrade --install of charts/codeexec-operator (release `codeexec-operator` in
#      codeexec-system), serving namespace codeexec-demo with pools demo-python and demo-nodejs.
#   4. The examples' CodeExecutions, fresh each run, in codeexec-demo; wait; print the table.
#
# A second run reuses the cluster, the images and the release: it only re-runs the examples.
# Exit status: 0 when every example ended in its expected outcome.
#
# Environment:
#   KUBECONFIG         a cluster of your own (its nodes must be able to pull the images; point
#                      the chart at your registry with DEMO_HELM_ARGS)
#   DEMO_HELM_ARGS     extra helm arguments, e.g. "--set image.repository=reg.example/operator"
#                      (the sandbox images follow: reg.example/python-sandbox:<tag>)
#   IMAGE_TAG          the images' tag (default dev, as images.sh builds them)
#   DEMO_NAMESPACE     where the examples run (default codeexec-demo)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=cluster/versions.env
source e2e/cluster/versions.env

CLUSTER="${CLUSTER:-$REPO/.cluster}"
CODEEXEC_CACHE="${CODEEXEC_CACHE:-$HOME/.cache/codeexec}"
RELEASE=codeexec-operator  # the chart's name: objects are named plainly codeexec-operator
RELEASE_NS=codeexec-system
DEMO_NS="${DEMO_NAMESPACE:-codeexec-demo}"
# Names of the demo's own: the test suite's operator uses python/nodejs and codeexec-sandbox on
# the same cluster, and two installations must not share pools or a sandbox namespace.
SANDBOX_NS=codeexec-demo-sandbox
PY_POOL=demo-python
JS_POOL=demo-nodejs
# pools.python.size=4 below: a warm pod for each Python example, so that none waits for a
# pod to warm up (pandas takes seconds to import) and the durations show the warm path.
VENV="$REPO/.venv"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
log() { printf '    %s\n' "$*" >&2; }
die() { printf 'demo: ERROR: %s\n' "$*" >&2; exit 1; }

# ---- tools -----------------------------------------------------------------------------

[[ -x "$VENV/bin/codeexec" ]] || { step "creating the virtualenv (make venv)"; make -s venv; }
PY="$VENV/bin/python"
CODEEXEC="$VENV/bin/codeexec"

kubectl_bin() {
  local ours="$CODEEXEC_CACHE/bin/kubernetes-$K8S_VERSION/kubectl"
  if [[ -x "$ours" ]]; then echo "$ours"; elif command -v kubectl >/dev/null; then command -v kubectl
  else return 1; fi
}

# ---- 1. which cluster --------------------------------------------------------------------

LOCAL_KUBECONFIG="$CLUSTER/kubeconfig"
if [[ -n "${KUBECONFIG:-}" && "$KUBECONFIG" != "$LOCAL_KUBECONFIG" ]]; then
  LOCAL=0
  KUBECTL="$(kubectl_bin)" || die "no kubectl on PATH"
  step "using the cluster of KUBECONFIG=$KUBECONFIG"
  "$KUBECTL" get --raw /readyz >/dev/null 2>&1 ||
    die "the cluster of KUBECONFIG=$KUBECONFIG does not answer; unset KUBECONFIG for the local one"
  if [[ "${DEMO_HELM_ARGS:-}" != *image* ]]; then
    log "note: the images (codeexec.local/*:${IMAGE_TAG:-dev}) exist only where images.sh"
    log "imported them; on another cluster push them to a registry and set DEMO_HELM_ARGS"
  fi
else
  LOCAL=1
  export KUBECONFIG="$LOCAL_KUBECONFIG"
  if KUBECTL="$(kubectl_bin)" && [[ -f "$KUBECONFIG" ]] &&
    "$KUBECTL" get --raw /readyz >/dev/null 2>&1; then
    step "the local cluster is up ($CLUSTER)"
  else
    step "bringing up the local cluster (make cluster-up; the first time takes a while)"
    bash e2e/cluster/up.sh
    KUBECTL="$(kubectl_bin)" || die "no kubectl after cluster-up"
  fi
fi
export KUBECONFIG
k() { "$KUBECTL" "$@"; }

# ---- 2. images ---------------------------------------------------------------------------

if [[ "$LOCAL" == 1 ]]; then
  step "images: building/importing what changed (e2e/cluster/images.sh)"
  mkdir -p "$CLUSTER/logs"
  images_log="$CLUSTER/logs/demo-images.log"
  if ! bash e2e/cluster/images.sh >"$images_log" 2>&1; then
    tail -n 20 "$images_log" >&2
    die "images.sh failed; log: $images_log"
  fi
  log "done (log: $images_log)"
fi

# ---- 3. the chart ------------------------------------------------------------------------

HELM="$(bash e2e/tools.sh)"
step "installing the chart: helm upgrade --install $RELEASE -n $RELEASE_NS"
k create namespace "$DEMO_NS" --dry-run=client -o yaml | k apply -f - >/dev/null
# shellcheck disable=SC2086  # DEMO_HELM_ARGS is a list of words on purpose
"$HELM" upgrade --install "$RELEASE" charts/codeexec-operator \
  --namespace "$RELEASE_NS" --create-namespace \
  --set "operator.watchNamespaces={$DEMO_NS}" \
  --set "sandbox.namespace.name=$SANDBOX_NS" \
  --set "pools.python.name=$PY_POOL" --set "pools.nodejs.name=$JS_POOL" \
  --set pools.python.size=4 \
  --set "image.tag=${IMAGE_TAG:-dev}" \
  ${DEMO_HELM_ARGS:-} \
  --wait --timeout 10m >/dev/null
log "operator: deployment/$RELEASE in $RELEASE_NS is ready"
for pool in "$PY_POOL" "$JS_POOL"; do
  size="$(k get sandboxpool "$pool" -o jsonpath='{.spec.size}')"
  k wait --for=jsonpath='{.status.ready}'="$size" "sandboxpool/$pool" --timeout=300s >/dev/null ||
    die "pool $pool did not fill up; see: kubectl describe sandboxpool $pool; kubectl -n $SANDBOX_NS get pods"
  log "pool $pool: $size warm pods ready"
done

# ---- 4. the examples ---------------------------------------------------------------------

step "running examples/*.yaml in namespace $DEMO_NS"
# Fresh results every run (a CodeExecution runs once; its spec is immutable).
k -n "$DEMO_NS" delete codeexecutions --all --wait=true >/dev/null
k -n "$DEMO_NS" create -f examples/ -o name | sed 's/^/    /' >&2
"$CODEEXEC" wait -n "$DEMO_NS" --timeout 600 || die "the examples did not finish"

step "results"
status=0
"$PY" -m e2e.examples -n "$DEMO_NS" || status=$?
cat >&2 <<EOF

Next:
  $CODEEXEC run examples/double.py --arg x=5 -n $DEMO_NS
  $KUBECTL -n $DEMO_NS get codeexecutions
  $KUBECTL -n $DEMO_NS get codeexecution python-exception -o yaml
  $KUBECTL get sandboxpools
EOF
[[ "$status" == 0 ]] || die "some examples did not end as expected (CHECK column)"
