#!/usr/bin/env bash
# Check the Helm chart: `helm lint`, then `helm template` with every values file in deploy/helm/ci/, each rendering
# validated with kubeconform against the JSON schemas of a Kubernetes release (unknown fields are errors).
#   scripts/check-helm.sh [--print-default]      --print-default: also print the default rendering
# helm and kubeconform are built from their Go modules (`go install`, through the Go module proxy) into a cache
# outside the repository, once per version; the schemas are made from the OpenAPI document in the Kubernetes
# module (`go mod download`) by scripts/k8s_schemas.py, once per Kubernetes version.
# Environment: TOOLS_CACHE (default ~/.cache/dragonfly-p2p/tools), HELM_VERSION, KUBECONFORM_VERSION, K8S_VERSION.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dragonfly-p2p/tools}
helm_version=${HELM_VERSION:-v3.17.3}
kubeconform_version=${KUBECONFORM_VERSION:-v0.7.0}
k8s_version=${K8S_VERSION:-v1.31.0}
chart="$repo/deploy/helm/dragonfly"

command -v go >/dev/null || { echo "check-helm.sh: go not found (needed to build helm and kubeconform)" >&2; exit 1; }

# One directory per tool version, so a version bump builds the new one and a cache hit costs nothing.
tool() {  # tool NAME VERSION PACKAGE
    local dir="$cache/$1-$2"
    if [ ! -x "$dir/$1" ]; then
        echo "check-helm.sh: building $1 $2 (once; cached in $dir)" >&2
        GOBIN="$dir" CGO_ENABLED=0 go install "$3@$2" >&2
    fi
    echo "$dir/$1"
}
helm=$(tool helm "$helm_version" helm.sh/helm/v3/cmd/helm)
kubeconform=$(tool kubeconform "$kubeconform_version" github.com/yannh/kubeconform/cmd/kubeconform)

schemas="$cache/k8s-schemas-$k8s_version"
if [ ! -f "$schemas/deployment-apps-v1.json" ]; then
    echo "check-helm.sh: making the Kubernetes $k8s_version schemas (once; cached in $schemas)" >&2
    module=$(cd "$cache" && go mod download -json "k8s.io/kubernetes@$k8s_version" | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    python3 "$repo/scripts/k8s_schemas.py" "$module/api/openapi-spec/swagger.json" "$schemas.tmp" >&2
    rm -rf "$schemas" && mv "$schemas.tmp" "$schemas"
fi

export HELM_CACHE_HOME="$cache/helm-home/cache" HELM_CONFIG_HOME="$cache/helm-home/config" HELM_DATA_HOME="$cache/helm-home/data"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$helm" lint --strict "$chart" --kube-version "${k8s_version#v}"
for values in "$repo"/deploy/helm/ci/*.yaml; do
    name=$(basename "$values" .yaml)
    "$helm" lint --strict --quiet "$chart" -f "$values" --kube-version "${k8s_version#v}"
    "$helm" template dragonfly "$chart" -f "$values" --namespace dragonfly-system --kube-version "${k8s_version#v}" >"$work/$name.yaml"
    echo "check-helm.sh: $name: $(grep -c '^kind:' "$work/$name.yaml") objects ($(grep '^kind:' "$work/$name.yaml" | sort | uniq -c | awk '{printf "%s %s, ", $1, $3}' | sed 's/, $//'))"
    "$kubeconform" -strict -summary -kubernetes-version "${k8s_version#v}" \
        -schema-location "$schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" "$work/$name.yaml"
done
if [ "${1:-}" = --print-default ]; then
    cat "$work/default.yaml"
fi
