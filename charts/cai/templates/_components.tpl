{{/* Objects every Cai component has; each is called with (dict "root" $ "component" "<name>"). */}}

{{- define "cai.serviceAccount" -}}
{{- $v := index .root.Values .component }}
{{- if $v.serviceAccount.create }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "cai.serviceAccountName" . }}
  labels:
    {{- include "cai.labels" . | nindent 4 }}
  {{- with $v.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
{{- end }}
{{- end }}

{{/* Whether the chart renders an HPA for the component. */}}
{{- define "cai.hpaEnabled" -}}
{{- $v := index .root.Values .component }}
{{- if and (eq .component "retriever") (eq .root.Values.qdrant.mode "embedded") }}
{{- else if and (eq .component "orchestrator") .root.Values.orchestrator.keda.enabled }}
{{- else if $v.autoscaling.enabled }}true{{ end }}
{{- end }}

{{/* Whether something else (our HPA or KEDA's) owns the replica count: then the Deployment must
not set `replicas`, or every upgrade would reset it. */}}
{{- define "cai.replicasManaged" -}}
{{- if or (include "cai.hpaEnabled" .) (and (eq .component "orchestrator") .root.Values.orchestrator.keda.enabled) }}true{{ end }}
{{- end }}

{{- define "cai.hpa" -}}
{{- $v := index .root.Values .component }}
{{- if include "cai.hpaEnabled" . }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "cai.componentName" . }}
  labels:
    {{- include "cai.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "cai.componentName" . }}
  minReplicas: {{ $v.autoscaling.minReplicas }}
  maxReplicas: {{ $v.autoscaling.maxReplicas }}
  metrics:
    {{- if $v.autoscaling.targetStreamsPerPod }}
    # Open SSE streams per pod, served by a custom-metrics API (prometheus-adapter).
    - type: Pods
      pods:
        metric:
          name: cai_sse_streams_in_flight
        target:
          type: AverageValue
          averageValue: {{ $v.autoscaling.targetStreamsPerPod | quote }}
    {{- end }}
    {{- if $v.autoscaling.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $v.autoscaling.targetCPUUtilizationPercentage }}
    {{- end }}
    {{- if $v.autoscaling.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ $v.autoscaling.targetMemoryUtilizationPercentage }}
    {{- end }}
  {{- with $v.autoscaling.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "cai.pdb" -}}
{{- $v := index .root.Values .component }}
{{- if $v.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "cai.componentName" . }}
  labels:
    {{- include "cai.labels" . | nindent 4 }}
spec:
  {{- if ne (toString $v.pdb.minAvailable) "" }}
  minAvailable: {{ $v.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $v.pdb.maxUnavailable }}
  {{- end }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "cai.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/* ServiceMonitor for a component; (dict "root" $ "component" "gateway" "port" "metrics"), and
"service" "<component>" when the metrics port is on a Service labelled as another component. */}}
{{- define "cai.serviceMonitor" -}}
{{- $m := .root.Values.metrics.serviceMonitor }}
{{- if $m.enabled }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "cai.componentName" . }}
  labels:
    {{- include "cai.labels" . | nindent 4 }}
    {{- with $m.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "cai.selectorLabels" (dict "root" .root "component" (.service | default .component)) | nindent 6 }}
  namespaceSelector:
    matchNames:
      - {{ .root.Release.Namespace }}
  endpoints:
    - port: {{ .port }}
      path: /metrics
      interval: {{ $m.interval }}
      scrapeTimeout: {{ $m.scrapeTimeout }}
      {{- with $m.relabelings }}
      relabelings:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $m.metricRelabelings }}
      metricRelabelings:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
{{- end }}

{{/* Native gRPC startup/liveness/readiness probes; (dict "probes" $v.probes "port" $v.grpcPort).
The grpc probe takes a port number only, not a port name. */}}
{{- define "cai.grpcProbes" -}}
{{- range $kind := list "startup" "liveness" "readiness" }}
{{- $p := index $.probes $kind }}
{{ $kind }}Probe:
  grpc:
    port: {{ $.port }}
    {{- with $p.service }}
    service: {{ . | quote }}
    {{- end }}
  periodSeconds: {{ $p.periodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: {{ $p.failureThreshold }}
{{- end }}
{{- end }}

{{/* Headless Service of a gRPC component; (dict "root" $ "component" "orchestrator"). */}}
{{- define "cai.headlessService" -}}
{{- $v := index .root.Values .component }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "cai.componentName" . }}-headless
  labels:
    {{- include "cai.labels" . | nindent 4 }}
  {{- with $v.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  # Headless: DNS returns every ready pod, so gRPC clients (dns:///, round_robin) spread calls
  # over all replicas instead of pinning one connection to one pod behind a ClusterIP.
  clusterIP: None
  publishNotReadyAddresses: false
  selector:
    {{- include "cai.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $v.grpcPort }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
    - name: metrics
      port: {{ $v.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
{{- end }}
