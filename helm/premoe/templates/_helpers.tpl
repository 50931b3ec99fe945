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

{{/* Pod annotations: the global ones, then the component's. */}}
{{- define "premoe.podAnnotations" -}}
{{- $a := merge (deepCopy (default (dict) .c.podAnnotations)) (default (dict) .ctx.Values.podAnnotations) }}
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
