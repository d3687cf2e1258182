{{/*
Names. `fullname` prefixes every namespaced object and every cluster-scoped one (ClusterRoles,
bindings), so two releases in one cluster never collide.
*/}}
{{- define "codeexec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "codeexec.fullname" -}}
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

{{- define "codeexec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart creates; `helm uninstall` checks rely on `instance`. */}}
{{- define "codeexec.labels" -}}
helm.sh/chart: {{ include "codeexec.chart" . }}
{{ include "codeexec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: codeexec
{{- end }}

{{- define "codeexec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "codeexec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "codeexec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "codeexec.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "codeexec.sandboxNamespace" -}}
{{- .Values.sandbox.namespace.name }}
{{- end }}

{{- define "codeexec.leaseName" -}}
{{- default (include "codeexec.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Leader election is always on. The chart cannot know how many replicas will run: `kubectl scale`
or an autoscaler adds some behind its back, and two replicas without a Lease both run every
execution. With one replica it costs a lease round-trip at start-up, and after a crash (no
release) up to one lease duration (15 s) before the restarted replica acts.
*/}}
{{- define "codeexec.leaderElection" -}}
true
{{- end }}

{{- define "codeexec.image" -}}
{{- $tag := include "codeexec.tag" . }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The value of the `codeexec.io/instance` label that ties pools to this installation. */}}
{{- define "codeexec.instance" -}}
{{- default (include "codeexec.fullname" .) .Values.operator.instance }}
{{- end }}

{{/* The images' tag: image.tag, else the chart's appVersion. */}}
{{- define "codeexec.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
A pool's image: its own `image`, else `<registry>/<language>-sandbox:<tag>` where the registry is
image.repository's (codeexec.local for codeexec.local/operator) and the tag the operator's.
Args: (list $ $pool).
*/}}
{{- define "codeexec.poolImage" -}}
{{- $root := index . 0 }}{{- $pool := index . 1 }}
{{- if $pool.image }}
{{- $pool.image }}
{{- else }}
{{- printf "%s/%s-sandbox:%s" (dir $root.Values.image.repository) $pool.language (include "codeexec.tag" $root) }}
{{- end }}
{{- end }}

{{/* Where `helm test` runs its execution: tests.namespace, else the first watched namespace,
else the release namespace. */}}
{{- define "codeexec.testNamespace" -}}
{{- if .Values.tests.namespace }}
{{- .Values.tests.namespace }}
{{- else if .Values.operator.watchNamespaces }}
{{- first .Values.operator.watchNamespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
The RuntimeClass of pools that name none: sandbox.runtimeClassName, else
sandbox.preferredRuntimeClassName if the cluster has that RuntimeClass now (lookup finds
nothing without a cluster, so `helm template` renders the node's default runtime).
*/}}
{{- define "codeexec.poolRuntimeClass" -}}
{{- if .Values.sandbox.runtimeClassName }}
{{- .Values.sandbox.runtimeClassName }}
{{- else if .Values.sandbox.preferredRuntimeClassName }}
{{- if lookup "node.k8s.io/v1" "RuntimeClass" "" .Values.sandbox.preferredRuntimeClassName }}
{{- .Values.sandbox.preferredRuntimeClassName }}
{{- end }}
{{- end }}
{{- end }}
