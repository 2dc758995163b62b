{{/*
Names. Component names are "<fullname>-<component>"; fullname is capped so that the longest
suffix ("-orchestrator-headless") still fits a 63-character DNS label.
*/}}
{{- define "cai.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "cai.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<component>"; call with (dict "root" $ "component" "gateway"). */}}
{{- define "cai.componentName" -}}
{{- printf "%s-%s" (include "cai.fullname" .root) .component }}
{{- end }}

{{- define "cai.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "root" $ "component" "gateway"). */}}
{{- define "cai.labels" -}}
helm.sh/chart: {{ include "cai.chart" .root }}
{{ include "cai.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: cai
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cai.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cai.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selects every pod of this release (NetworkPolicy deny-all). */}}
{{- define "cai.releaseSelector" -}}
app.kubernetes.io/name: {{ include "cai.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Image reference; call with (dict "root" $ "image" .Values.gateway.image). */}}
{{- define "cai.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion | toString }}
{{- if hasPrefix "sha256:" $tag }}
{{- printf "%s@%s" .image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "cai.serviceAccountName" -}}
{{- $sa := index .root.Values .component "serviceAccount" }}
{{- if $sa.create }}
{{- default (include "cai.componentName" .) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/* Service names the clients dial. */}}
{{- define "cai.orchestratorHeadless" -}}
{{- printf "%s-headless" (include "cai.componentName" (dict "root" . "component" "orchestrator")) }}
{{- end }}
{{- define "cai.retrieverHeadless" -}}
{{- printf "%s-headless" (include "cai.componentName" (dict "root" . "component" "retriever")) }}
{{- end }}
{{- define "cai.orchestratorAddr" -}}
{{- printf "dns:///%s:%d" (include "cai.orchestratorHeadless" .) (int .Values.orchestrator.grpcPort) }}
{{- end }}
{{- define "cai.retrieverAddr" -}}
{{- printf "dns:///%s:%d" (include "cai.retrieverHeadless" .) (int .Values.retriever.grpcPort) }}
{{- end }}

{{/* Secrets the chart generates when no existingSecret is given. */}}
{{- define "cai.authSecretName" -}}
{{- .Values.gateway.auth.existingSecret | default (include "cai.componentName" (dict "root" . "component" "auth")) }}
{{- end }}
{{- define "cai.testSecretName" -}}
{{- .Values.tests.existingSecret | default (include "cai.authSecretName" .) }}
{{- end }}
{{- define "cai.redisSecretName" -}}
{{- if eq .Values.redis.mode "internal" }}
{{- .Values.redis.internal.existingSecret | default (include "cai.componentName" (dict "root" . "component" "redis")) }}
{{- else }}
{{- .Values.redis.external.existingSecret }}
{{- end }}
{{- end }}
{{- define "cai.redisSecretKey" -}}
{{- if eq .Values.redis.mode "internal" }}{{ .Values.redis.internal.existingSecretPasswordKey }}{{ else }}{{ .Values.redis.external.existingSecretPasswordKey }}{{ end }}
{{- end }}
{{- define "cai.qdrantSecretName" -}}
{{- if eq .Values.qdrant.mode "internal" }}
{{- .Values.qdrant.internal.existingSecret | default (include "cai.componentName" (dict "root" . "component" "qdrant")) }}
{{- else if eq .Values.qdrant.mode "external" }}
{{- .Values.qdrant.external.existingSecret }}
{{- end }}
{{- end }}
{{- define "cai.qdrantSecretKey" -}}
{{- if eq .Values.qdrant.mode "internal" }}{{ .Values.qdrant.internal.existingSecretKey }}{{ else }}{{ .Values.qdrant.external.existingSecretKey }}{{ end }}
{{- end }}

{{/*
A random secret value that survives upgrades: reuse the value in the live Secret if there is one
(`lookup` returns nothing under `helm template`, so offline renders get a fresh value).
Call with (dict "root" $ "name" "<secret name>" "key" "<key>" "length" 32).
*/}}
{{- define "cai.persistentRandom" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $existing (hasKey ($existing.data | default dict) .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}

{{/* Redis address "host:port" and whether it uses TLS, for REDIS_URL and KEDA. */}}
{{- define "cai.redisHostPort" -}}
{{- if eq .Values.redis.mode "internal" }}
{{- /* Fully qualified: KEDA's operator dials it from its own namespace. */}}
{{- printf "%s.%s.svc:6379" (include "cai.componentName" (dict "root" . "component" "redis")) .Release.Namespace }}
{{- else }}
{{- $u := urlParse .Values.redis.external.url }}
{{- if contains ":" $u.host }}{{ $u.host }}{{ else }}{{ printf "%s:6379" $u.host }}{{ end }}
{{- end }}
{{- end }}
{{/* Redis database index of the URL the services use ("0" for the in-chart Redis). */}}
{{- define "cai.redisDatabase" -}}
{{- if eq .Values.redis.mode "internal" }}0
{{- else }}
{{- $db := trimPrefix "/" (urlParse .Values.redis.external.url).path }}
{{- $db | default "0" }}
{{- end }}
{{- end }}
{{/* Redis username of the external URL (empty: none, or it comes from the Secret). */}}
{{- define "cai.redisUsername" -}}
{{- if eq .Values.redis.mode "external" }}
{{- $u := urlParse .Values.redis.external.url }}
{{- if $u.userinfo }}{{ splitList ":" $u.userinfo | first }}{{ end }}
{{- end }}
{{- end }}

{{/* The KEDA redis-streams metadata both orchestrator triggers share: where the queue is. */}}
{{- define "cai.kedaRedisMetadata" -}}
address: {{ include "cai.redisHostPort" . | quote }}
stream: {{ .Values.orchestrator.keda.stream | quote }}
consumerGroup: {{ .Values.orchestrator.keda.consumerGroup | quote }}
databaseIndex: {{ include "cai.redisDatabase" . | quote }}
enableTLS: {{ include "cai.redisTLS" . | quote }}
{{- $user := include "cai.redisUsername" . }}
{{- if and $user (not .Values.redis.external.existingSecretUsernameKey) }}
username: {{ $user | quote }}
{{- end }}
{{- end }}

{{/* Runs per orchestrator pod KEDA aims for: targetLoad x maxConcurrentRuns, at least 1. */}}
{{- define "cai.kedaTargetRuns" -}}
{{- max 1 (floor (mulf .Values.orchestrator.keda.targetLoad .Values.orchestrator.maxConcurrentRuns) | int) }}
{{- end }}
{{- define "cai.redisTLS" -}}
{{- if and (eq .Values.redis.mode "external") (hasPrefix "rediss://" .Values.redis.external.url) }}true{{ else }}false{{ end }}
{{- end }}

{{/*
REDIS_PASSWORD (from the Secret, when there is one) and REDIS_URL, which embeds it through
Kubernetes' $(VAR) expansion so the password never appears in the pod spec.
*/}}
{{- define "cai.redisEnv" -}}
{{- $secret := include "cai.redisSecretName" . }}
{{- if $secret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ include "cai.redisSecretKey" . }}
{{- end }}
{{- if eq .Values.redis.mode "internal" }}
- name: REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s/0" (include "cai.redisHostPort" .) | quote }}
{{- else }}
{{- $u := urlParse .Values.redis.external.url }}
{{- $user := "" }}
{{- if $u.userinfo }}{{ $user = (splitList ":" $u.userinfo | first) }}{{ end }}
{{- $auth := "" }}
{{- if $secret }}{{ $auth = printf "%s:$(REDIS_PASSWORD)@" $user }}{{ else if $user }}{{ $auth = printf "%s@" $user }}{{ end }}
- name: REDIS_URL
  value: {{ printf "%s://%s%s%s%s" $u.scheme $auth $u.host $u.path (ternary (printf "?%s" $u.query) "" (ne $u.query "")) | quote }}
{{- end }}
{{- end }}

{{/* OTel and common service env; call with (dict "root" $ "component" "gateway"). */}}
{{- define "cai.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "cai-%s" .component | quote }}
{{- $attrs := list "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.pod.name=$(POD_NAME)" "k8s.node.name=$(NODE_NAME)" (printf "service.namespace=%s" .root.Release.Name) (printf "service.version=%s" .root.Chart.AppVersion) }}
{{- range $k, $v := .root.Values.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- if .root.Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .root.Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .root.Values.otel.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .root.Values.otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .root.Values.otel.samplerArg | quote }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: "none"
{{- end }}
{{- end }}

{{/* Topology spread; call with (dict "root" $ "component" "gateway"). */}}
{{- define "cai.topologySpread" -}}
{{- $own := index .root.Values .component "topologySpreadConstraints" }}
{{- if $own }}
topologySpreadConstraints:
  {{- toYaml $own | nindent 2 }}
{{- else if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
{{- range .root.Values.topologySpread.topologyKeys }}
  - maxSkew: {{ $.root.Values.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $.root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "cai.selectorLabels" $ | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
{{- end }}
{{- end }}
{{- end }}

{{/* Scheduling fields shared by the Deployments; call with (dict "root" $ "values" .Values.gateway). */}}
{{- define "cai.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/*
Grace-period guard: the pod must outlive preStop + the service's whole drain (one deadline,
SHUTDOWN_GRACE_SECONDS, for finishing work, handing it back and closing streams) + a margin
for the process to exit after that deadline.
*/}}
{{- define "cai.shutdownMarginSeconds" -}}5{{- end }}
{{- define "cai.checkGrace" -}}
{{- $v := index .root.Values .component }}
{{- $need := add (ceil $v.preStopSleepSeconds | int) (ceil $v.shutdownGraceSeconds | int) (include "cai.shutdownMarginSeconds" . | int) }}
{{- if lt (int $v.terminationGracePeriodSeconds) $need }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must be at least preStopSleepSeconds + shutdownGraceSeconds + %s (%v)" .component $v.terminationGracePeriodSeconds (include "cai.shutdownMarginSeconds" .) $need) }}
{{- end }}
{{- end }}

{{/* The LLM endpoint the orchestrator calls. */}}
{{- define "cai.llmBaseUrl" -}}
{{- if .Values.llm.baseUrl }}
{{- .Values.llm.baseUrl }}
{{- else if .Values.llmSim.enabled }}
{{- printf "http://%s:%d/v1" (include "cai.componentName" (dict "root" . "component" "llm-sim")) (int .Values.llmSim.port) }}
{{- end }}
{{- end }}

{{/* Values combinations that cannot work. */}}
{{- define "cai.validate" -}}
{{- if and .Values.orchestrator.keda.enabled .Values.orchestrator.autoscaling.enabled }}
{{- fail "orchestrator.keda.enabled and orchestrator.autoscaling.enabled are mutually exclusive: KEDA manages its own HPA. Set orchestrator.autoscaling.enabled=false." }}
{{- end }}
{{- if and .Values.orchestrator.keda.enabled (lt (int .Values.orchestrator.keda.minReplicaCount) 1) }}
{{- fail "orchestrator.keda.minReplicaCount must be at least 1: runs are enqueued through a running orchestrator, so nothing could wake the deployment from zero" }}
{{- end }}
{{- if gt (int .Values.orchestrator.keda.minReplicaCount) (int .Values.orchestrator.keda.maxReplicaCount) }}
{{- fail "orchestrator.keda.minReplicaCount must not exceed orchestrator.keda.maxReplicaCount" }}
{{- end }}
{{- range $c := list "gateway" "orchestrator" "retriever" }}
{{- $a := (index $.Values $c).autoscaling }}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- fail (printf "%s.autoscaling.minReplicas must not exceed maxReplicas" $c) }}
{{- end }}
{{- if and $a.enabled (not $a.targetCPUUtilizationPercentage) (not $a.targetMemoryUtilizationPercentage) (not $a.targetStreamsPerPod) }}
{{- fail (printf "%s.autoscaling needs a target: targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage%s" $c (ternary " or targetStreamsPerPod" "" (eq $c "gateway"))) }}
{{- end }}
{{- include "cai.checkGrace" (dict "root" $ "component" $c) }}
{{- end }}
{{- if and (eq .Values.redis.mode "external") (not .Values.redis.external.url) }}
{{- fail "redis.mode=external needs redis.external.url" }}
{{- end }}
{{- if and (eq .Values.qdrant.mode "external") (not .Values.qdrant.external.url) }}
{{- fail "qdrant.mode=external needs qdrant.external.url" }}
{{- end }}
{{- end }}

{{/*
gRPC transport security (values `tls`, docs/security.md). Each component's certificate names it
"<fullname>-<component>"; the orchestrator and retriever believe a request's tenant only from the
names in GRPC_TRUSTED_CLIENTS. Call each with (dict "root" $ "component" "<name>").
*/}}
{{- define "cai.grpcIdentity" -}}
{{- include "cai.componentName" . }}
{{- end }}

{{- define "cai.grpcTLSSecretName" -}}
{{- if eq .root.Values.tls.source "existingSecrets" }}
{{- index .root.Values.tls.existingSecrets .component }}
{{- else }}
{{- printf "%s-grpc-tls" (include "cai.componentName" .) }}
{{- end }}
{{- end }}

{{/* Certificate names whose requests the component believes. */}}
{{- define "cai.grpcTrustedClients" -}}
{{- $names := list }}
{{- if eq .component "orchestrator" }}
{{- $names = list (include "cai.grpcIdentity" (dict "root" .root "component" "gateway")) }}
{{- else }}
{{- /* Itself too: `cai ingest` run in its pod (kubectl exec) presents the pod's certificate. */}}
{{- $names = list (include "cai.grpcIdentity" (dict "root" .root "component" "orchestrator")) (include "cai.grpcIdentity" .) }}
{{- end }}
{{- join "," (concat $names (index .root.Values.tls.extraTrustedClients .component)) }}
{{- end }}

{{/* TLS files of every gRPC client and server. */}}
{{- define "cai.grpcTLSEnv" -}}
{{- if .root.Values.tls.enabled }}
- name: GRPC_TLS_CERT_FILE
  value: /etc/cai/grpc-tls/tls.crt
- name: GRPC_TLS_KEY_FILE
  value: /etc/cai/grpc-tls/tls.key
- name: GRPC_TLS_CA_FILE
  value: /etc/cai/grpc-tls/ca.crt
{{- end }}
{{- end }}

{{/* What a gRPC server adds: reflection, and with TLS the trusted callers and probe port. */}}
{{- define "cai.grpcServerEnv" -}}
{{- $v := index .root.Values .component }}
- name: GRPC_REFLECTION
  value: {{ $v.grpcReflection | quote }}
{{- if .root.Values.tls.enabled }}
- name: GRPC_TRUSTED_CLIENTS
  value: {{ include "cai.grpcTrustedClients" . | quote }}
- name: GRPC_HEALTH_PORT
  value: {{ index .root.Values.tls.healthPorts .component | quote }}
{{- end }}
{{- end }}

{{/* The port the native gRPC probes use: the plaintext health port when the gRPC port wants a
client certificate, which the kubelet cannot present. */}}
{{- define "cai.grpcProbePort" -}}
{{- if .root.Values.tls.enabled }}{{ index .root.Values.tls.healthPorts .component }}
{{- else }}{{ (index .root.Values .component).grpcPort }}{{ end }}
{{- end }}

{{- define "cai.grpcTLSVolumeMount" -}}
{{- if .root.Values.tls.enabled }}
- name: grpc-tls
  mountPath: /etc/cai/grpc-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "cai.grpcTLSVolume" -}}
{{- if .root.Values.tls.enabled }}
- name: grpc-tls
  secret:
    secretName: {{ include "cai.grpcTLSSecretName" . }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}

{{/*
Processes a pod runs (GATEWAY_WORKERS, ORCHESTRATOR_PROCESSES): `count` when above 0, else the
CPU limit of `resources`, else its CPU request, rounded up; at least 1. One Python process uses
one core at most. Call with (dict "count" $v.processes "resources" $v.resources).
*/}}
{{- define "cai.processCount" -}}
{{- $n := int (.count | default 0) }}
{{- if le $n 0 }}
{{- $res := .resources | default dict }}
{{- $cpu := (($res.limits | default dict).cpu) | default (($res.requests | default dict).cpu) | default "" | toString }}
{{- if hasSuffix "m" $cpu }}
{{- $n = int (ceil (divf (trimSuffix "m" $cpu | float64) 1000)) }}
{{- else if $cpu }}
{{- $n = int (ceil ($cpu | float64)) }}
{{- end }}
{{- end }}
{{- max $n 1 }}
{{- end }}
