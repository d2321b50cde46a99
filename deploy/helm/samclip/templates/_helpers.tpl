{{/* Chart name, truncated to the 63 characters DNS labels allow. */}}
{{- define "samclip.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "samclip.fullname" -}}
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

{{- define "samclip.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "samclip.selectorLabels" -}}
app.kubernetes.io/name: {{ include "samclip.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "samclip.labels" -}}
helm.sh/chart: {{ include "samclip.chart" . }}
{{ include "samclip.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference
{{- end }}

{{- define "samclip.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "samclip.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: repository@digest when image.digest is set, else repository:tag (default
<appVersion>-cpu or <appVersion>-gpu). */}}
{{- define "samclip.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $variant := ternary "gpu" "cpu" .Values.gpu.enabled }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $variant) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* A Kubernetes quantity (512Mi, 6Gi, 2G, 1e9, 8589934592) as an integer number of bytes. */}}
{{- define "samclip.bytes" -}}
{{- if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- . | int64 }}
{{- else }}
{{- $units := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" . }}
{{- $suffix := trimPrefix $number . }}
{{- if or (not $number) (and $suffix (not (hasKey $units $suffix))) }}
{{- fail (printf "cannot read %q as a memory quantity (use e.g. 512Mi, 6Gi)" .) }}
{{- end }}
{{- mulf (float64 $number) (default 1 (get $units $suffix)) | floor | int64 }}
{{- end }}
{{- end }}

{{/* Drain seconds: config.drain_timeout_s if set, else request timeout + one encoder batch. */}}
{{- define "samclip.drainSeconds" -}}
{{- $needed := addf .Values.config.request_timeout_s .Values.lifecycle.batchSeconds | ceil | int }}
{{- if hasKey .Values.config "drain_timeout_s" }}
{{- .Values.config.drain_timeout_s | ceil | int }}
{{- else }}
{{- $needed }}
{{- end }}
{{- end }}

{{/* Seconds the kubelet waits after preStop starts: preStop sleep + drain + margin, unless set explicitly. */}}
{{- define "samclip.terminationGracePeriodSeconds" -}}
{{- $derived := add .Values.lifecycle.preStopSleepSeconds (include "samclip.drainSeconds" .) .Values.lifecycle.terminationExtraSeconds }}
{{- .Values.lifecycle.terminationGracePeriodSeconds | default $derived | int }}
{{- end }}

{{/* Name of the shared-tier Redis objects (in-chart Redis). */}}
{{- define "samclip.redisName" -}}
{{- printf "%s-redis" (include "samclip.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Redis image (digest when set). */}}
{{- define "samclip.redisImage" -}}
{{- if .Values.redis.image.digest }}
{{- printf "%s@%s" .Values.redis.image.repository .Values.redis.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.redis.image.repository .Values.redis.image.tag }}
{{- end }}
{{- end }}

{{/* Secret holding the in-chart Redis password. */}}
{{- define "samclip.redisSecretName" -}}
{{- default (include "samclip.redisName" .) .Values.redis.auth.existingSecret }}
{{- end }}

{{/* PromQL label matchers selecting this release's series. */}}
{{- define "samclip.promSelector" -}}
{{- default (printf "namespace=%q, job=%q" .Release.Namespace (include "samclip.fullname" .)) .Values.metricsSelector }}
{{- end }}

{{/* A settings value as an env string: lists and maps as JSON, everything else as text. */}}
{{- define "samclip.envValue" -}}
{{- if or (kindIs "slice" .) (kindIs "map" .) }}
{{- toJson . }}
{{- else if kindIs "float64" . }}
{{- if eq (floor .) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}
