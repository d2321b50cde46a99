{{/*
Consistency checks between values: each one fails `helm template`/`install` with the reason and the fix.
Included once, from deployment.yaml.
*/}}
{{- define "samclip.validate" -}}
{{- $v := .Values }}
{{- /* Bundle from a URL: where from, and the checksum that makes the download trustworthy. */}}
{{- if eq $v.bundle.source "url" }}
{{- if not (or $v.bundle.url.uri $v.bundle.url.existingSecret) }}
{{- fail "bundle.source=url needs bundle.url.uri or bundle.url.existingSecret (a Secret holding the URL)" }}
{{- end }}
{{- if and $v.bundle.url.uri $v.bundle.url.existingSecret }}
{{- fail "bundle.url: set uri or existingSecret, not both" }}
{{- end }}
{{- if not $v.bundle.url.sha256 }}
{{- fail "bundle.url.sha256 is required for http(s) bundle sources (sha256sum bundle.tar.gz)" }}
{{- end }}
{{- end }}
{{- /* Memory: the cache is sized from the limit, so there must be one, and an explicit cache must fit in it. */}}
{{- $limits := default dict $v.resources.limits }}
{{- if not (or (hasKey $limits "memory") (hasKey $v.config "memory_limit_bytes")) }}
{{- fail "resources.limits.memory is required: the service sizes its embedding cache from the memory limit" }}
{{- end }}
{{- if and (hasKey $limits "memory") (hasKey $v.config "cache_bytes") }}
{{- $limit := include "samclip.bytes" $limits.memory | float64 }}
{{- if gt (float64 $v.config.cache_bytes) (mulf $limit 0.75) }}
{{- fail (printf "config.cache_bytes (%d) is more than 75%% of resources.limits.memory (%s): the model and request buffers need the rest" (int64 $v.config.cache_bytes) (toString $limits.memory)) }}
{{- end }}
{{- end }}
{{- /* Drain and grace period must cover the longest request: request timeout + one encoder batch. */}}
{{- $timeout := $v.config.request_timeout_s }}
{{- $needed := addf $timeout $v.lifecycle.batchSeconds }}
{{- if and (hasKey $v.config "drain_timeout_s") (lt (float64 $v.config.drain_timeout_s) (float64 $needed)) }}
{{- fail (printf "config.drain_timeout_s (%v) is shorter than config.request_timeout_s (%v) + lifecycle.batchSeconds (%v): a rollout or scale-in would cut requests off; raise it or leave it unset (derived)" $v.config.drain_timeout_s $timeout $v.lifecycle.batchSeconds) }}
{{- end }}
{{- $drain := include "samclip.drainSeconds" . | int }}
{{- $grace := include "samclip.terminationGracePeriodSeconds" . | int }}
{{- $minGrace := add $v.lifecycle.preStopSleepSeconds $drain }}
{{- if lt $grace $minGrace }}
{{- fail (printf "lifecycle.terminationGracePeriodSeconds (%d) is shorter than preStop sleep (%d s) + drain (%d s = request timeout %v s + one batch %v s): the kubelet would kill pods mid-request; raise it to at least %d or leave it null (derived)" $grace (int $v.lifecycle.preStopSleepSeconds) $drain $timeout $v.lifecycle.batchSeconds $minGrace) }}
{{- end }}
{{- /* GPU pods: a GPU backend on the GPU, and no CPU-based autoscaling. */}}
{{- if $v.gpu.enabled }}
{{- if and (hasKey $v.config "device") (ne (toString $v.config.device) "cuda") }}
{{- fail (printf "gpu.enabled runs on the GPU (SAMCLIP_DEVICE=cuda): remove config.device=%v" $v.config.device) }}
{{- end }}
{{- if and $v.autoscaling.enabled (or (eq $v.autoscaling.mode "cpu") $v.autoscaling.cpu.alongsideLoad) }}
{{- fail "gpu.enabled: a GPU pod's CPU use says little about its load; use autoscaling.mode load or keda (not cpu)" }}
{{- end }}
{{- end }}
{{- /* Autoscaling bounds and disruption budget: a budget that no replica count can satisfy blocks every drain. */}}
{{- $minReplicas := ternary $v.autoscaling.minReplicas $v.replicaCount $v.autoscaling.enabled | int }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas is larger than autoscaling.maxReplicas" }}
{{- end }}
{{- if and $v.podDisruptionBudget.enabled (hasKey $v.podDisruptionBudget "minAvailable") }}
{{- $min := $v.podDisruptionBudget.minAvailable }}
{{- if and (not (kindIs "string" $min)) (ge (int $min) $minReplicas) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) must be below the replica count (%d), or no node could ever be drained; raise minReplicas/replicaCount" (int $min) $minReplicas) }}
{{- end }}
{{- end }}
{{- /* Shared tier: one source for SAMCLIP_REDIS_URL. */}}
{{- if and $v.redis.enabled $v.redis.external.existingSecret }}
{{- fail "redis: set redis.enabled (in-chart Redis) or redis.external.existingSecret (external URL), not both" }}
{{- end }}
{{- /* Ingress: a hash key must exist, and explicit proxy timeouts must not undercut the request timeout. */}}
{{- if $v.ingress.enabled }}
{{- if and (eq $v.ingress.routing.mode "hash") (not $v.ingress.routing.hashBy) }}
{{- fail "ingress.routing.mode=hash needs ingress.routing.hashBy (an nginx variable with a fallback; see README)" }}
{{- end }}
{{- range $key := list "proxy-read-timeout" "proxy-send-timeout" }}
{{- $set := index $v.ingress.annotations (printf "nginx.ingress.kubernetes.io/%s" $key) }}
{{- if and $set (lt (float64 $set) (float64 $timeout)) }}
{{- fail (printf "ingress annotation %s (%v s) is shorter than config.request_timeout_s (%v s): the proxy would cut requests the service still serves; remove it (derived)" $key $set $timeout) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
