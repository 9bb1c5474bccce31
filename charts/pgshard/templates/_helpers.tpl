{{- define "pgshard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pgshard.labels" -}}
app.kubernetes.io/name: pgshard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pgshard.selector" -}}
app.kubernetes.io/name: pgshard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "pgshard.serviceAccount" -}}
{{- default (include "pgshard.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "pgshard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- /*
The namespaces the operator manages, comma-separated; empty: every namespace
(rbac.scope=cluster). Fails on a scope that is unknown or contradicts watchNamespaces.
*/ -}}
{{- define "pgshard.namespaces" -}}
{{- $scope := .Values.rbac.scope -}}
{{- if eq $scope "cluster" -}}
{{- if .Values.watchNamespaces -}}
{{- fail "rbac.scope=cluster manages every namespace: leave watchNamespaces empty, or use rbac.scope=namespace to manage just the namespaces it lists" -}}
{{- end -}}
{{- else if eq $scope "namespace" -}}
{{- join "," (default (list .Release.Namespace) .Values.watchNamespaces) -}}
{{- else -}}
{{- fail (printf "rbac.scope must be namespace or cluster, not %q" $scope) -}}
{{- end -}}
{{- end -}}
