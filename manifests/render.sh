#!/usr/bin/env bash
# Render manifests/nodeipam.yaml, the plain manifests for `kubectl apply -f`, from the Helm chart in
# manifests/charts/nodeipam (the single source of every manifest). tests/chart/test_chart.py runs the
# command from the file's header again and fails if the checked-in file differs.
#
#   bash manifests/render.sh              # helm from ~/.cache/nodeipam (built on first use)
#   PYTHON=.venv/bin/python bash manifests/render.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
HELM="$("$PYTHON" -c 'from localcluster.binaries import ensure_binaries; print(ensure_binaries(("helm",))["helm"])')"

# The values of the rendered file, also written verbatim into its header. --kube-version pins the
# version `helm template` checks the chart's kubeVersion against (the chart's minimum); otherwise it
# is whatever the helm binary was built with (v1.20.0 for a plain `go install` build).
ARGS=(template nodeipam manifests/charts/nodeipam --namespace kube-system --kube-version 1.31.0 --include-crds
  --set clusterCIDR=10.244.0.0/16)
OUT=manifests/nodeipam.yaml

RENDERED="$("$HELM" "${ARGS[@]}")"
{
  echo "# nodeipam: plain manifests rendered from the Helm chart manifests/charts/nodeipam. Do not edit:"
  echo "# change the chart and run manifests/render.sh (a test fails when this file is stale)."
  echo "#"
  echo "# Values: clusterCIDR=10.244.0.0/16 (one /24 per Node), namespace kube-system, all else the chart's"
  echo "# defaults: leader election, hostNetwork on control-plane nodes, image nodeipam:<appVersion>, and 1 replica"
  echo "# (helm install counts the control-plane Nodes and runs 2 where two fit; a rendered file cannot: with two or"
  echo "# more control-plane Nodes, set spec.replicas of the Deployment to 2 for a standby)."
  echo "# Set --cluster-cidr below to your kube-controller-manager --cluster-cidr, and run that with"
  echo "# --allocate-node-cidrs=false. Then: kubectl apply -f manifests/nodeipam.yaml"
  echo "#"
  echo "# Command: helm ${ARGS[*]}"
  printf '%s\n' "$RENDERED"
} >"$OUT"
echo "wrote $OUT" >&2
