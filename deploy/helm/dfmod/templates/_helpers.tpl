{{/* Names, labels and the values-derived settings every template shares. */}}

{{- define "dfmod.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>", or the release name alone when it already contains the chart name. */}}
{{- define "dfmod.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Component resource names; 63 characters leave room for the suffix. */}}
{{- define "dfmod.worker.fullname" -}}
{{- printf "%s-worker" (include "dfmod.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}
{{- define "dfmod.triton.fullname" -}}
{{- printf "%s-triton" (include "dfmod.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{- define "dfmod.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "dfmod.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dfmod
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "worker"). Immutable once deployed. */}}
{{- define "dfmod.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dfmod.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dfmod.componentLabels" -}}
{{ include "dfmod.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A component's ServiceAccount. Call with (dict "root" . "component" "worker"|"triton"). */}}
{{- define "dfmod.serviceAccountName" -}}
{{- $sa := (get .root.Values .component).serviceAccount -}}
{{- if $sa.create -}}
{{- default (printf "%s-%s" (include "dfmod.fullname" .root) .component) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest pins it. Call with (dict "image" .image "default" tag). */}}
{{- define "dfmod.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .default .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The worker's drain timeout: settings.drain_timeout_s, else the worker's own default (30 s). */}}
{{- define "dfmod.worker.drainTimeout" -}}
{{- $s := .Values.worker.settings | default dict -}}
{{- if hasKey $s "drain_timeout_s" }}{{ $s.drain_timeout_s }}{{ else }}30{{ end -}}
{{- end -}}

{{/* Grace period after SIGTERM: explicit, or drain + 30 s for the final commit and the producer flush. */}}
{{- define "dfmod.worker.gracePeriod" -}}
{{- $drain := include "dfmod.worker.drainTimeout" . | float64 -}}
{{- $grace := int .Values.worker.terminationGracePeriodSeconds -}}
{{- if eq $grace 0 -}}
{{- $grace = add (ceil $drain | int) 30 -}}
{{- end -}}
{{- if le (float64 $grace) $drain -}}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) must exceed worker.settings.drain_timeout_s (%v): the pod would be killed mid-drain" $grace $drain) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}

{{/* gRPC address the workers call: this release's headless Triton Service (every pod), or triton.externalUrl. */}}
{{- define "dfmod.triton.url" -}}
{{- if .Values.triton.enabled -}}
{{- printf "dns:///%s-pods:8001" (include "dfmod.triton.fullname" .) -}}
{{- else if .Values.triton.externalUrl -}}
{{- .Values.triton.externalUrl -}}
{{- else -}}
{{- fail "triton.enabled is false: set triton.externalUrl to the gRPC address (host:port) of your Triton" -}}
{{- end -}}
{{- end -}}

{{- define "dfmod.kafka.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}
{{/* SASL with a username and password from a Secret (PLAIN, SCRAM); not OAUTHBEARER nor AWS_MSK_IAM. */}}
{{- define "dfmod.kafka.saslPassword" -}}
{{- if and (include "dfmod.kafka.sasl" .) (not (has .Values.kafka.sasl.mechanism (list "OAUTHBEARER" "AWS_MSK_IAM"))) }}true{{ end -}}
{{- end -}}
{{- define "dfmod.kafka.tls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end -}}
{{/* The Kafka TLS Secret is mounted (TLS on and a Secret given). */}}
{{- define "dfmod.kafka.tlsMounted" -}}
{{- if and (include "dfmod.kafka.tls" .) .Values.kafka.tls.existingSecret }}true{{ end -}}
{{- end -}}
{{- define "dfmod.kafka.tlsDir" -}}/etc/dfmod/kafka-tls{{- end -}}

{{/*
Settings dict -> DFMOD_* EnvVars, recursively: nested keys join with "__", upper-cased; strings verbatim,
everything else as JSON (numbers without exponent, lists as JSON arrays); null keeps the worker's default.
Call with (dict "prefix" "DFMOD_" "settings" .Values.worker.settings).
*/}}
{{- define "dfmod.settingsEnv" -}}
{{- $prefix := .prefix -}}
{{- range $key, $value := .settings }}
{{- $name := printf "%s%s" $prefix (upper $key) }}
{{- if kindIs "map" $value }}
{{- include "dfmod.settingsEnv" (dict "prefix" (printf "%s__" $name) "settings" $value) }}
{{- else if not (kindIs "invalid" $value) }}
- name: {{ $name }}
  value: {{ ternary $value (toJson $value) (kindIs "string" $value) | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Topology spread constraints with the component's selector filled in where the user left it out. */}}
{{- define "dfmod.topologySpread" -}}
{{- $selector := include "dfmod.selectorLabels" (dict "root" .root "component" .component) | fromYaml -}}
{{- range .constraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $c | nindent 2 | trim }}
{{- end }}
{{- end -}}

{{/* Checks that span several values (the schema checks single values). */}}
{{- define "dfmod.validate" -}}
{{- if and .Values.triton.enabled .Values.triton.tls.enabled (not .Values.triton.tls.serverSecret) -}}
{{- fail "triton.tls.enabled with this chart's Triton: set triton.tls.serverSecret (a kubernetes.io/tls Secret whose certificate names <release>-triton-pods)" -}}
{{- end -}}
{{- range $name, $tls := dict "cache.tls" .Values.cache.tls "triton.tls" .Values.triton.tls -}}
{{- if and $tls.certKey (not $tls.keyKey) -}}
{{- fail (printf "%s.certKey is set: set %s.keyKey too (a client certificate and its key)" $name $name) -}}
{{- end -}}
{{- end -}}
{{- $w := .Values.worker -}}
{{- $a := $w.autoscaling -}}
{{- $parts := int .Values.kafka.eventsPartitions -}}
{{- if and (include "dfmod.kafka.sasl" .) (eq .Values.kafka.sasl.mechanism "OAUTHBEARER") (not .Values.kafka.sasl.oauthTokenFile) -}}
{{- fail "kafka.sasl.mechanism OAUTHBEARER needs kafka.sasl.oauthTokenFile (a token file mounted with worker.extraVolumes)" -}}
{{- end -}}
{{- if and (include "dfmod.kafka.saslPassword" .) (not .Values.kafka.sasl.existingSecret) -}}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.existingSecret (a Secret with the SASL username and password)" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if and .Values.kafka.tls.certKey (not .Values.kafka.tls.keyKey) -}}
{{- fail "kafka.tls.certKey is set: kafka.tls.keyKey (the client private key) is needed too" -}}
{{- end -}}
{{- if ne $a.type "none" -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "worker.autoscaling.minReplicas (%d) exceeds maxReplicas (%d)" (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- if and (gt $parts 0) (gt (int $a.maxReplicas) $parts) -}}
{{- fail (printf "worker.autoscaling.maxReplicas (%d) exceeds kafka.eventsPartitions (%d): replicas beyond the partition count idle" (int $a.maxReplicas) $parts) -}}
{{- end -}}
{{- if and (eq $a.type "hpa") (lt (int $a.minReplicas) 1) -}}
{{- fail "worker.autoscaling.minReplicas must be >= 1 with type hpa (only KEDA scales to zero)" -}}
{{- end -}}
{{- else if and (gt $parts 0) (gt (int $w.replicas) $parts) -}}
{{- fail (printf "worker.replicas (%d) exceeds kafka.eventsPartitions (%d): replicas beyond the partition count idle" (int $w.replicas) $parts) -}}
{{- end -}}
{{- if .Values.triton.enabled -}}
{{- $repo := .Values.triton.modelRepository -}}
{{- if and (eq $repo.type "s3") (not $repo.s3.url) -}}
{{- fail "triton.modelRepository.type is s3: set triton.modelRepository.s3.url (s3://bucket/prefix)" -}}
{{- end -}}
{{- if and (eq $repo.type "pvc") (not $repo.pvc.claimName) -}}
{{- fail "triton.modelRepository.type is pvc: set triton.modelRepository.pvc.claimName" -}}
{{- end -}}
{{- if and (eq $repo.type "emptyDir") (not $repo.init.enabled) -}}
{{- fail "triton.modelRepository.type is emptyDir: enable triton.modelRepository.init to fill it, or Triton never becomes ready" -}}
{{- end -}}
{{- if and $repo.init.enabled (eq $repo.type "s3") -}}
{{- fail "triton.modelRepository.init fills a volume: use it with type pvc or emptyDir, not s3" -}}
{{- end -}}
{{- if and (eq .Values.triton.modelControlMode "explicit") (empty .Values.triton.models) -}}
{{- fail "triton.modelControlMode is explicit: list the models to load in triton.models" -}}
{{- end -}}
{{- end -}}
{{- $_ := include "dfmod.worker.gracePeriod" . -}}
{{- $_ := include "dfmod.triton.url" . -}}
{{- end -}}

{{/* Stakater Reloader's annotation naming the Secrets a Deployment references (rolloutOnSecretChange), or nothing.
Call with (dict "root" . "secrets" (list name...)); empty names are left out. */}}
{{- define "dfmod.reloadOn" -}}
{{- $names := compact .secrets | uniq -}}
{{- if and .root.Values.rolloutOnSecretChange $names -}}
annotations:
  secret.reloader.stakater.com/reload: {{ join "," $names | quote }}
{{- end -}}
{{- end -}}

{{/* The Redis TLS Secret is mounted (a rediss:// URL and a Secret given). */}}
{{- define "dfmod.cache.tlsMounted" -}}
{{- if and (hasPrefix "rediss://" .Values.cache.url) .Values.cache.tls.existingSecret }}true{{ end -}}
{{- end -}}

{{/* <prefix>TLS_CA_FILE / TLS_CERT_FILE / TLS_KEY_FILE for the keys of a mounted TLS Secret.
Call with (dict "prefix" "DFMOD_CACHE__" "dir" "/etc/dfmod/redis-tls" "tls" .Values.cache.tls). */}}
{{- define "dfmod.tlsFileEnv" -}}
{{- if .tls.caKey }}
- name: {{ .prefix }}TLS_CA_FILE
  value: {{ printf "%s/%s" .dir .tls.caKey | quote }}
{{- end }}
{{- if .tls.certKey }}
- name: {{ .prefix }}TLS_CERT_FILE
  value: {{ printf "%s/%s" .dir .tls.certKey | quote }}
- name: {{ .prefix }}TLS_KEY_FILE
  value: {{ printf "%s/%s" .dir .tls.keyKey | quote }}
{{- end }}
{{- end -}}
