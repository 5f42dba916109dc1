{{/* Name of the chart, overridable. */}}
{{- define "nixgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified name: release-chart unless the release name already says nixgate. */}}
{{- define "nixgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "nixgate.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "nixgate.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The headless Service replicas resolve to find each other. */}}
{{- define "nixgate.peersService" -}}
{{- printf "%s-peers" (include "nixgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nixgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nixgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The `helm test` pod's labels: never the appliance's selector. */}}
{{- define "nixgate.testSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-test" (include "nixgate.name" .) }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end -}}

{{- define "nixgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "nixgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* registry/repository:tag; global.imageRegistry wins over image.registry (Bitnami's
convention); no registry = the repository alone. */}}
{{- define "nixgate.image" -}}
{{- $registry := default .Values.image.registry (.Values.global).imageRegistry -}}
{{- $ref := printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- if $registry -}}
{{- printf "%s/%s" (trimSuffix "/" $registry) $ref -}}
{{- else -}}
{{- $ref -}}
{{- end -}}
{{- end -}}

{{/* The pods' ServiceAccount: the created one, a named existing one, or "" (the namespace's
default). */}}
{{- define "nixgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nixgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Bytes of a size as nixgate parses it (cache.maxSize: K/Ki/KiB = 1024, KB = 1000) or of a
Kubernetes quantity (Ki = 1024, K = 1000 there: pass "k8s" as the second element). */}}
{{- define "nixgate.bytes" -}}
{{- $s := index . 0 | toString | nospace -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $s -}}
{{- $unit := trimPrefix $num $s -}}
{{- $bin := dict "" 1 "B" 1 "Ki" 1024 "KiB" 1024 "Mi" 1048576 "MiB" 1048576 "Gi" 1073741824 "GiB" 1073741824 "Ti" 1099511627776 "TiB" 1099511627776 "Pi" 1125899906842624 "KB" 1000 "MB" 1000000 "GB" 1000000000 "TB" 1000000000000 -}}
{{- $k8s := eq (index . 1) "k8s" -}}
{{- $_ := set $bin "K" (ternary 1000 1024 $k8s) -}}
{{- $_ := set $bin "M" (ternary 1000000 1048576 $k8s) -}}
{{- $_ := set $bin "G" (ternary 1000000000 1073741824 $k8s) -}}
{{- $_ := set $bin "T" (ternary 1000000000000 1099511627776 $k8s) -}}
{{- $_ := set $bin "P" 1000000000000000 -}}
{{- mulf $num (get $bin $unit) | int64 -}}
{{- end -}}

{{/* PromQL label matchers of this release's scrape targets (Prometheus Operator sets job to
the Service name; the runner Service, so that no replica counts twice). */}}
{{- define "nixgate.promSelector" -}}
{{- printf "namespace=%q, job=%q" .Release.Namespace (include "nixgate.fullname" .) -}}
{{- end -}}

{{/*
The files nixgate reads from existing Secrets, by volume name (mounted at
/run/secrets/nixgate/<name>/<file>): the upstream netrc, the upload token, the signing key,
the upstream CAs.
*/}}
{{- define "nixgate.secretFiles" -}}
{{- with .Values.upstreamAuth.existingSecret }}
netrc: {secret: {{ . | quote }}, key: {{ $.Values.upstreamAuth.key | quote }}, file: netrc}
{{- end }}
{{- with .Values.uploads.existingSecret }}
upload: {secret: {{ . | quote }}, key: {{ $.Values.uploads.tokenKey | quote }}, file: token}
{{- end }}
{{- with .Values.uploads.signingKeySecret }}
signing: {secret: {{ . | quote }}, key: {{ $.Values.uploads.signingKeyKey | quote }}, file: secret-key}
{{- end }}
{{- with .Values.upstreamEgress.caSecret }}
ca: {secret: {{ . | quote }}, key: {{ $.Values.upstreamEgress.caKey | quote }}, file: ca.pem}
{{- end }}
{{- end }}
