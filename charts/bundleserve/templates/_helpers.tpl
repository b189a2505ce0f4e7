{{/* Names, labels and small shared fragments. Selector labels never carry the chart or app version. */}}

{{/* The chart name, or nameOverride. */}}
{{- define "bundleserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-qualified name; kept to 46 characters so the longest suffix (-operator-metrics) still fits in 63. */}}
{{- define "bundleserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label only. */}}
{{- define "bundleserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object (call with: dict "ctx" $ "component" "operator"). */}}
{{- define "bundleserve.labels" -}}
helm.sh/chart: {{ include "bundleserve.chart" .ctx }}
{{ include "bundleserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: bundleserve
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable across upgrades, so no version of any kind. */}}
{{- define "bundleserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bundleserve.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* Component object names. */}}
{{- define "bundleserve.operator.fullname" -}}
{{- printf "%s-operator" (include "bundleserve.fullname" .) }}
{{- end }}

{{- define "bundleserve.gateway.fullname" -}}
{{- printf "%s-gateway" (include "bundleserve.fullname" .) }}
{{- end }}

{{- define "bundleserve.redis.fullname" -}}
{{- printf "%s-redis" (include "bundleserve.fullname" .) }}
{{- end }}

{{- define "bundleserve.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "bundleserve.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bundleserve.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "bundleserve.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The bundleserve image reference: repository[:tag][@digest], tag defaulting to the chart's appVersion. */}}
{{- define "bundleserve.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- if .Values.image.digest }}
{{- $ref = printf "%s@%s" $ref .Values.image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{/* The namespaces a namespaced operator watches: operator.watchNamespaces, or the release namespace. */}}
{{- define "bundleserve.operator.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- toJson .Values.operator.watchNamespaces }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/* The kopf peering object name (leader election between operator replicas). */}}
{{- define "bundleserve.operator.peeringName" -}}
{{- default (include "bundleserve.operator.fullname" .) .Values.operator.peeringName }}
{{- end }}

{{/* Name of the Secret holding the Redis URL under key `url`, or "" when async queues are not configured. */}}
{{- define "bundleserve.redis.secretName" -}}
{{- if .Values.redis.enabled }}
{{- include "bundleserve.redis.fullname" . }}
{{- else }}
{{- .Values.redis.existingSecret }}
{{- end }}
{{- end }}

{{/*
The API-key Secret routers and the gateway check (key `api-keys`): apiKeys.existingSecret, else the chart's own
generated one; empty only when auth.enabled is false (every route anonymous).
*/}}
{{- define "bundleserve.apiKeys.secretName" -}}
{{- if .Values.auth.enabled }}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "bundleserve.fullname" .)) }}
{{- else if .Values.apiKeys.existingSecret }}
{{- fail "apiKeys.existingSecret is set but auth.enabled is false: enable auth or drop the Secret" }}
{{- end }}
{{- end }}

{{/* The operator's RBAC rules: the one list in files/operator-rbac.yaml, shared with the operator's code. */}}
{{- define "bundleserve.operator.rules" -}}
{{- $rules := .Files.Get "files/operator-rbac.yaml" | fromYamlArray }}
{{- if not $rules }}
{{- fail "files/operator-rbac.yaml is missing or empty" }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/*
The subset of the operator's rules that name cluster-scoped resources. A namespaced operator gets them through a
ClusterRole, because a Role cannot grant them.
*/}}
{{- define "bundleserve.operator.clusterScopedRules" -}}
{{- $clusterScoped := list "customresourcedefinitions" "namespaces" "clusterkopfpeerings" "nodes" }}
{{- $picked := list }}
{{- range (.Files.Get "files/operator-rbac.yaml" | fromYamlArray) }}
{{- $resources := list }}
{{- range .resources }}
{{- if has . $clusterScoped }}
{{- $resources = append $resources . }}
{{- end }}
{{- end }}
{{- if $resources }}
{{- $picked = append $picked (merge (dict "resources" $resources) (omit . "resources")) }}
{{- end }}
{{- end }}
{{- if $picked }}
{{- toYaml $picked }}
{{- end }}
{{- end }}

{{/* pod-level scheduling fields shared by every workload (call with the component's values). */}}
{{- define "bundleserve.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}
