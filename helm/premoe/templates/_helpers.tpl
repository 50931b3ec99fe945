{{/* Chart name, overridable. */}}
{{- define "premoe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every object. Truncated so that the longest suffix added
below ("-worker-headless", 16 characters) still fits a 63-character DNS label.
*/}}
{{- define "premoe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 47 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "premoe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "premoe.labels" -}}
helm.sh/chart: {{ include "premoe.chart" . }}
{{ include "premoe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: premoe
{{- end }}

{{- define "premoe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "premoe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "store"). */}}
{{- define "premoe.componentLabels" -}}
{{ include "premoe.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "premoe.componentSelectorLabels" -}}
{{ include "premoe.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "premoe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "premoe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "premoe.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/* Object names. */}}
{{- define "premoe.storeName" -}}{{ include "premoe.fullname" . }}-store{{- end }}
{{- define "premoe.routerName" -}}{{ include "premoe.fullname" . }}-router{{- end }}
{{- define "premoe.workerName" -}}{{ include "premoe.fullname" . }}-worker{{- end }}
{{- define "premoe.workerHeadlessName" -}}{{ include "premoe.fullname" . }}-worker-headless{{- end }}

{{/* Addresses the router dials: fully qualified Service names. */}}
{{- define "premoe.storeAddress" -}}
{{- printf "%s.%s.svc.%s:%d" (include "premoe.storeName" .) .Release.Namespace .Values.clusterDomain (int .Values.store.port) }}
{{- end }}
{{- define "premoe.workersDns" -}}
{{- printf "%s.%s.svc.%s:%d" (include "premoe.workerHeadlessName" .) .Release.Namespace .Values.clusterDomain (int .Values.worker.port) }}
{{- end }}

{{/*
Metrics ports (0: none). The store and the workers serve --metrics-listen on
metrics.port; the router serves /metrics on its HTTP API, or on metrics.port
when router.httpPort is 0.
*/}}
{{- define "premoe.metricsPort" -}}
{{- if .Values.metrics.enabled }}{{ int .Values.metrics.port }}{{ else }}0{{ end }}
{{- end }}
{{- define "premoe.routerMetricsListenPort" -}}
{{- if eq (int .Values.router.httpPort) 0 }}{{ include "premoe.metricsPort" . }}{{ else }}0{{ end }}
{{- end }}
{{- define "premoe.routerScrapePort" -}}
{{- if gt (int .Values.router.httpPort) 0 }}{{ int .Values.router.httpPort }}{{ else }}{{ include "premoe.routerMetricsListenPort" . }}{{ end }}
{{- end }}

{{/* Fails on ports that clash within a pod. */}}
{{- define "premoe.checkPorts" -}}
{{- $r := .Values.router }}
{{- if and (gt (int $r.httpPort) 0) (eq (int $r.httpPort) (int $r.port)) }}
{{- fail (printf "router.httpPort %d is router.port too" (int $r.httpPort)) }}
{{- end }}
{{- if .Values.metrics.enabled }}
{{- $mp := int .Values.metrics.port }}
{{- if le $mp 0 }}
{{- fail "metrics.port must be a port number when metrics.enabled is true" }}
{{- end }}
{{- range $name, $port := dict "store.port" .Values.store.port "worker.port" .Values.worker.port "router.port" $r.port }}
{{- if eq (int $port) $mp }}
{{- fail (printf "metrics.port %d is %s too" $mp $name) }}
{{- end }}
{{- end }}
{{- else if .Values.metrics.serviceMonitor.enabled }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- end }}

{{/* The model directory inside the pods. */}}
{{- define "premoe.modelPath" -}}
{{- printf "/models/%s" .Values.model.name }}
{{- end }}

{{/* The model volume (nothing for source: image). */}}
{{- define "premoe.modelVolume" -}}
{{- $m := .Values.model }}
{{- if eq $m.source "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ required "model.pvc.claimName is required when model.source is pvc" $m.pvc.claimName }}
    readOnly: true
{{- else if eq $m.source "hostPath" }}
- name: model
  hostPath:
    path: {{ required "model.hostPath.path is required when model.source is hostPath" $m.hostPath.path }}
    type: {{ $m.hostPath.type }}
{{- else if ne $m.source "image" }}
{{- fail (printf "model.source must be pvc, hostPath or image, not %q" $m.source) }}
{{- end }}
{{- end }}

{{- define "premoe.modelMount" -}}
{{- if ne .Values.model.source "image" }}
- name: model
  mountPath: {{ include "premoe.modelPath" . }}
  readOnly: true
  {{- if and (eq .Values.model.source "pvc") .Values.model.pvc.subPath }}
  subPath: {{ .Values.model.pvc.subPath }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The writable /tmp of every container (the root file system is read-only). */}}
{{- define "premoe.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmp.sizeLimit }}
{{- end }}
{{- define "premoe.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Environment of every container, then the component's extraEnv. */}}
{{- define "premoe.env" -}}
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod settings shared by every component: (dict "ctx" $ "c" .Values.COMPONENT). */}}
{{- define "premoe.podCommon" -}}
{{- $ctx := .ctx }}
serviceAccountName: {{ include "premoe.serviceAccountName" $ctx }}
automountServiceAccountToken: {{ $ctx.Values.serviceAccount.automountServiceAccountToken }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Pod annotations: (dict "ctx" $ "c" .Values.COMPONENT "metricsPort" PORT). The
component's win over the global ones, and both over the Prometheus scrape
annotations for PORT (none when PORT is 0, metrics are off or
metrics.scrapeAnnotations is false), so a pod can still opt out.
*/}}
{{- define "premoe.podAnnotations" -}}
{{- $m := .ctx.Values.metrics }}
{{- $port := int (default 0 .metricsPort) }}
{{- $scrape := dict }}
{{- if and $m.enabled $m.scrapeAnnotations (gt $port 0) }}
{{- $scrape = dict "prometheus.io/scrape" "true" "prometheus.io/port" (toString $port) "prometheus.io/path" "/metrics" }}
{{- end }}
{{- $a := merge (deepCopy (default (dict) .c.podAnnotations)) (deepCopy (default (dict) .ctx.Values.podAnnotations)) $scrape }}
{{- with $a }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Native gRPC probes of one component:
(dict "port" PORT "service" READINESS_SERVICE "p" .Values.COMPONENT.probes).
Liveness and startup ask the health service "" (SERVING once the server runs),
readiness asks for the component's own service name.
*/}}
{{- define "premoe.probes" -}}
startupProbe:
  grpc:
    port: {{ .port }}
    service: ""
  periodSeconds: {{ .p.startup.periodSeconds }}
  failureThreshold: {{ .p.startup.failureThreshold }}
livenessProbe:
  grpc:
    port: {{ .port }}
    service: ""
  periodSeconds: {{ .p.liveness.periodSeconds }}
  timeoutSeconds: {{ .p.liveness.timeoutSeconds }}
  failureThreshold: {{ .p.liveness.failureThreshold }}
readinessProbe:
  grpc:
    port: {{ .port }}
    service: {{ .service | quote }}
  periodSeconds: {{ .p.readiness.periodSeconds }}
  timeoutSeconds: {{ .p.readiness.timeoutSeconds }}
  failureThreshold: {{ .p.readiness.failureThreshold }}
{{- end }}
