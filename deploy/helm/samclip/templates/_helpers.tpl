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

{{/* Image reference; the default tag is <appVersion>-cpu or <appVersion>-gpu. */}}
{{- define "samclip.image" -}}
{{- $variant := ternary "gpu" "cpu" .Values.gpu.enabled }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $variant) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Seconds the kubelet waits after preStop starts: preStop sleep + drain timeout + margin. */}}
{{- define "samclip.terminationGracePeriodSeconds" -}}
{{- $drain := .Values.config.drain_timeout_s | default 25 | ceil | int }}
{{- add .Values.lifecycle.preStopSleepSeconds $drain .Values.lifecycle.terminationExtraSeconds }}
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
