{{/* The chart name, or nameOverride. */}}
{{- define "nodeipam.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of every object, and of the leader-election Lease. */}}
{{- define "nodeipam.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nodeipam.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nodeipam.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nodeipam.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nodeipam.labels" -}}
helm.sh/chart: {{ include "nodeipam.chart" . }}
{{ include "nodeipam.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "nodeipam.serviceAccountName" -}}
{{- default (include "nodeipam.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "nodeipam.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (.Values.image.tag | default .Chart.AppVersion)) }}
{{- end }}

{{/* The address families of clusterCIDR, in flag order: "ipv4", "ipv6", "ipv4,ipv6" or "ipv6,ipv4". */}}
{{- define "nodeipam.families" -}}
{{- $families := list }}
{{- range splitList "," .Values.clusterCIDR }}
{{- $families = append $families (ternary "ipv6" "ipv4" (contains ":" .)) }}
{{- end }}
{{- join "," $families }}
{{- end }}

{{/*
The range flags, one per line, shared by `nodeipam run` and the `nodeipam status` hint in NOTES.txt.
The controller refuses --node-cidr-mask-size-ipv6 on an IPv4-only cluster and vice versa, and
--node-cidr-mask-size together with the per-family flags, so only the flags that apply are passed.
*/}}
{{- define "nodeipam.rangeArgs" -}}
{{- $clusterCIDR := required "clusterCIDR is required: the pod network, e.g. --set clusterCIDR=10.244.0.0/16" .Values.clusterCIDR }}
{{- $families := splitList "," (include "nodeipam.families" .) }}
{{- $single := .Values.nodeCIDRMaskSize }}
{{- if and (not (kindIs "invalid" $single)) (gt (len $families) 1) }}
{{- fail "nodeCIDRMaskSize is for single-stack clusters only: with a dual-stack clusterCIDR set nodeCIDRMaskSizeIPv4 and nodeCIDRMaskSizeIPv6 instead" }}
{{- end }}
{{- range splitList "," $clusterCIDR }}
{{- $prefix := int (last (splitList "/" .)) }}
{{- $family := ternary "IPv6" "IPv4" (contains ":" .) }}
{{- $mask := ternary (ternary $.Values.nodeCIDRMaskSizeIPv6 $.Values.nodeCIDRMaskSizeIPv4 (eq $family "IPv6")) $single (kindIs "invalid" $single) | int }}
{{- if lt $mask $prefix }}
{{- fail (printf "the node mask size %d is shorter than the prefix /%d of clusterCIDR entry %s: set nodeCIDRMaskSize%s to at least %d" $mask $prefix . (ternary "" $family (not (kindIs "invalid" $single))) $prefix) }}
{{- end }}
{{- if gt $mask (ternary 128 32 (eq $family "IPv6")) }}
{{- fail (printf "the node mask size %d is longer than an %s address (clusterCIDR entry %s)" $mask $family .) }}
{{- end }}
{{- end }}
--cluster-cidr={{ $clusterCIDR }}
{{- if not (kindIs "invalid" $single) }}
--node-cidr-mask-size={{ int $single }}
{{- else }}
{{- if has "ipv4" $families }}
--node-cidr-mask-size-ipv4={{ int .Values.nodeCIDRMaskSizeIPv4 }}
{{- end }}
{{- if has "ipv6" $families }}
--node-cidr-mask-size-ipv6={{ int .Values.nodeCIDRMaskSizeIPv6 }}
{{- end }}
{{- end }}
{{- with .Values.serviceClusterIPRange }}
--service-cluster-ip-range={{ . }}
{{- end }}
{{- end }}

{{/*
The host of --metrics-bind-address and --health-probe-bind-address: [::] when the primary (first)
cluster CIDR is IPv6. With metrics.bindPodIP, the Pod's IP, which the kubelet expands from the POD_IP
env variable (an IPv6 address needs brackets before the port).
*/}}
{{- define "nodeipam.bindHost" -}}
{{- $ipv6 := hasPrefix "ipv6" (include "nodeipam.families" .) }}
{{- $host := .Values.metrics.bindHost }}
{{- if and .Values.metrics.bindPodIP $host }}
{{- fail "metrics.bindPodIP and metrics.bindHost both choose the address to bind: set only one" }}
{{- end }}
{{- if .Values.metrics.bindPodIP }}
{{- $host = ternary "[$(POD_IP)]" "$(POD_IP)" $ipv6 }}
{{- else if not $host }}
{{- $host = ternary "[::]" "0.0.0.0" $ipv6 }}
{{- end }}
{{- $host }}
{{- end }}

{{/* host:port for --metrics-bind-address. */}}
{{- define "nodeipam.metricsBindAddress" -}}
{{- printf "%s:%d" (include "nodeipam.bindHost" .) (int .Values.metrics.port) }}
{{- end }}

{{/* host:port for --health-probe-bind-address, on the same host. */}}
{{- define "nodeipam.probeBindAddress" -}}
{{- if eq (int .Values.probes.port) (int .Values.metrics.port) }}
{{- fail "probes.port and metrics.port must differ: the probes are served by a process of their own" }}
{{- end }}
{{- printf "%s:%d" (include "nodeipam.bindHost" .) (int .Values.probes.port) }}
{{- end }}

{{/* Every argument of `nodeipam run`, one per line. */}}
{{- define "nodeipam.args" -}}
run
{{ include "nodeipam.rangeArgs" . | trim }}
--leader-elect={{ .Values.leaderElection.enabled }}
--leader-elect-resource-name={{ include "nodeipam.fullname" . }}
--leader-elect-resource-namespace={{ .Release.Namespace }}
--leader-elect-lease-duration={{ .Values.leaderElection.leaseDuration }}
--leader-elect-renew-deadline={{ .Values.leaderElection.renewDeadline }}
--leader-elect-retry-period={{ .Values.leaderElection.retryPeriod }}
--metrics-bind-address={{ include "nodeipam.metricsBindAddress" . }}
--health-probe-bind-address={{ include "nodeipam.probeBindAddress" . }}
{{- if .Values.metrics.tlsSecret }}
--tls-cert-file=/etc/nodeipam/tls/tls.crt
--tls-private-key-file=/etc/nodeipam/tls/tls.key
{{- end }}
{{- with .Values.apiServer }}
--master={{ . }}
{{- end }}
{{- if not (kindIs "invalid" .Values.kubeAPIQPS) }}
--kube-api-qps={{ .Values.kubeAPIQPS }}
{{- end }}
{{- if not (kindIs "invalid" .Values.kubeAPIBurst) }}
--kube-api-burst={{ int64 .Values.kubeAPIBurst }}
{{- end }}
--log-level={{ .Values.logLevel }}
{{- if .Values.dryRun }}
--dry-run
{{- end }}
{{- range .Values.extraArgs }}
{{ . }}
{{- end }}
{{- end }}

{{/* The memory request, in MiB: the base, plus the per-Node cost for sizing.nodes. */}}
{{- define "nodeipam.memoryRequestMiB" -}}
{{- $perNodeKiB := mul (int .Values.sizing.nodes) (int .Values.sizing.memoryPerNodeKiB) }}
{{- add (int .Values.sizing.baseMemoryMiB) (div (add $perNodeKiB 1023) 1024) }}
{{- end }}

{{/* Container resources: what `resources` says, with a memory request and limit from `sizing` where it says none. */}}
{{- define "nodeipam.resources" -}}
{{- $resources := deepCopy (default dict .Values.resources) }}
{{- $requests := default dict $resources.requests }}
{{- $limits := default dict $resources.limits }}
{{- $request := int (include "nodeipam.memoryRequestMiB" .) }}
{{- if not (hasKey $requests "memory") }}
{{- $_ := set $requests "memory" (printf "%dMi" $request) }}
{{- end }}
{{- if not (hasKey $limits "memory") }}
{{- $_ := set $limits "memory" (printf "%dMi" (div (mul $request (add 100 (int .Values.sizing.burstHeadroomPercent))) 100)) }}
{{- end }}
{{- $_ := set $resources "requests" $requests }}
{{- $_ := set $resources "limits" $limits }}
{{- toYaml $resources }}
{{- end }}

{{/*
Replicas: .Values.replicas when set. Unset (the default), as many as the pods can have without one
waiting Pending for good, at most 2: with hostNetwork the probe and metrics ports are host ports, so
two replicas never share a Node; the Nodes they may run on (nodeSelector, not cordoned) are counted at
install and upgrade through the API (helm's lookup). Rendered without a cluster (helm template,
--dry-run), lookup finds none: 1. Without hostNetwork, 2. Without leader election, 1.
*/}}
{{- define "nodeipam.replicas" -}}
{{- if not (kindIs "invalid" .Values.replicas) }}
{{- int .Values.replicas }}
{{- else if not .Values.leaderElection.enabled }}
{{- 1 }}
{{- else if not .Values.hostNetwork }}
{{- 2 }}
{{- else }}
{{- $count := 0 }}
{{- range (dig "items" list (lookup "v1" "Node" "" "")) }}
{{- $node := . }}
{{- $fits := not (dig "spec" "unschedulable" false $node) }}
{{- range $key, $value := ($.Values.nodeSelector | default dict) }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString (dig "metadata" "labels" $key "\x00absent" $node)) (toString $value)) }}
{{- $fits = false }}
{{- end }}
{{- end }}
{{- if $fits }}
{{- $count = add1 $count }}
{{- end }}
{{- end }}
{{- max 1 (min $count 2) }}
{{- end }}
{{- end }}
