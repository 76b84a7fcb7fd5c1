{{/* Chart name. */}}
{{- define "tunery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-<chart>, or the release name if it already holds the chart name. */}}
{{- define "tunery.fullname" -}}
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

{{- define "tunery.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "tunery.labels" -}}
helm.sh/chart: {{ include "tunery.chart" . }}
app.kubernetes.io/name: {{ include "tunery.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include "tunery.selectorLabels" (dict "ctx" $ "component" "api"). */}}
{{- define "tunery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tunery.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's resources. */}}
{{- define "tunery.componentLabels" -}}
{{ include "tunery.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tunery.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tunery.servingImage" -}}
{{- printf "%s:%s" .Values.vllm.image.repository (default .Chart.AppVersion .Values.vllm.image.tag) }}
{{- end }}

{{- define "tunery.trainerImage" -}}
{{- printf "%s:%s" .Values.training.image.repository (default .Chart.AppVersion .Values.training.image.tag) }}
{{- end }}

{{/* Namespace of trainer Jobs, the scheduler's Role and its Lease. */}}
{{- define "tunery.trainingNamespace" -}}
{{- default .Release.Namespace .Values.training.namespace }}
{{- end }}

{{- define "tunery.api.serviceAccountName" -}}
{{- if .Values.api.serviceAccount.create }}
{{- default (printf "%s-api" (include "tunery.fullname" .)) .Values.api.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.api.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tunery.scheduler.serviceAccountName" -}}
{{- if .Values.scheduler.serviceAccount.create }}
{{- default (printf "%s-scheduler" (include "tunery.fullname" .)) .Values.scheduler.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.scheduler.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tunery.trainer.serviceAccountName" -}}
{{- if .Values.training.serviceAccount.create }}
{{- default (printf "%s-trainer" (include "tunery.fullname" .)) .Values.training.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.training.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret trainer pods load with envFrom. */}}
{{- define "tunery.trainer.credentialsSecret" -}}
{{- if .Values.training.credentials.existingSecret }}
{{- .Values.training.credentials.existingSecret }}
{{- else if .Values.training.credentials.create }}
{{- printf "%s-trainer" (include "tunery.fullname" .) }}
{{- end }}
{{- end }}

{{/* Address trainer pods dial to report to the scheduler. */}}
{{- define "tunery.grpcAdvertiseAddress" -}}
{{- printf "%s-scheduler-grpc.%s.svc.%s:%d" (include "tunery.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.scheduler.grpcPort) }}
{{- end }}

{{/* URL of the vLLM server the API proxies chat completions to (empty: none). */}}
{{- define "tunery.vllmUrl" -}}
{{- if .Values.vllm.enabled }}
{{- printf "http://%s-vllm.%s.svc.%s:%d" (include "tunery.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.vllm.port) }}
{{- else }}
{{- .Values.vllm.externalUrl }}
{{- end }}
{{- end }}

{{/* The port of a URL: its own, else 80 for http and 443 otherwise. */}}
{{- define "tunery.urlPort" -}}
{{- $u := urlParse . }}
{{- $port := regexFind ":[0-9]+$" $u.host | trimPrefix ":" }}
{{- if $port }}{{ $port }}{{ else if eq $u.scheme "http" }}80{{ else }}443{{ end }}
{{- end }}

{{/* Labels that select trainer pods: the ones the scheduler gives them (scheduler/k8s_manifests.py TRAINER_LABELS)
and networkPolicy.trainerPodLabels. */}}
{{- define "tunery.trainerPodLabels" -}}
{{- $labels := dict "app.kubernetes.io/name" "tunery-trainer" "app.kubernetes.io/managed-by" "tunery" }}
{{- toYaml (merge $labels .Values.networkPolicy.trainerPodLabels) }}
{{- end }}

{{/* One NetworkPolicyEgressRule, a list item: include "tunery.egressRule" (dict "to" $peers "ports" $ports).
Without peers it admits any address on those ports. */}}
{{- define "tunery.egressRule" -}}
- ports:
    {{- toYaml .ports | nindent 4 }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Egress to DNS, for every part. */}}
{{- define "tunery.dnsEgress" -}}
{{- $ports := list (dict "port" 53 "protocol" "UDP") (dict "port" 53 "protocol" "TCP") }}
{{- include "tunery.egressRule" (dict "to" .Values.networkPolicy.egress.dns.to "ports" $ports) }}
{{- end }}

{{/* Egress to the object store (API, scheduler, trainers, vLLM): at networkPolicy.egress.objectStore.ports, or the
port of objectStore.s3.endpointUrl (AWS S3 when empty: 443). */}}
{{- define "tunery.objectStoreEgress" -}}
{{- $os := .Values.networkPolicy.egress.objectStore }}
{{- $ports := $os.ports }}
{{- if not $ports }}
{{- $port := include "tunery.urlPort" (default "https://s3.amazonaws.com" .Values.objectStore.s3.endpointUrl) }}
{{- $ports = list (dict "port" (int $port) "protocol" "TCP") }}
{{- end }}
{{- include "tunery.egressRule" (dict "to" $os.to "ports" $ports) }}
{{- end }}

{{/* Egress to the metadata store (API, scheduler): the chart's PostgreSQL, or networkPolicy.egress.database. */}}
{{- define "tunery.databaseEgress" -}}
{{- if .Values.postgresql.enabled }}
- ports:
    - port: 5432
      protocol: TCP
  to:
    - podSelector:
        matchLabels:
          {{- include "tunery.selectorLabels" (dict "ctx" . "component" "postgresql") | nindent 10 }}
{{- else if include "tunery.hasDatabase" . }}
{{- $db := .Values.networkPolicy.egress.database }}
{{- include "tunery.egressRule" (dict "to" $db.to "ports" $db.ports) }}
{{- end }}
{{- end }}

{{/* Whether a metadata store is configured. */}}
{{- define "tunery.hasDatabase" -}}
{{- if or .Values.database.url .Values.database.existingSecret .Values.postgresql.enabled }}true{{ end }}
{{- end }}

{{/* Where TUNERY_DATABASE_URL comes from: an EnvVar (none when no database is configured). */}}
{{- define "tunery.databaseUrlEnv" -}}
{{- if include "tunery.hasDatabase" . }}
- name: TUNERY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.database.existingSecret }}
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
      {{- else }}
      name: {{ include "tunery.fullname" . }}
      key: database-url
      {{- end }}
{{- end }}
{{- end }}

{{/* Secret-held settings of the API and scheduler containers: database URL, S3 keys. */}}
{{- define "tunery.secretEnv" -}}
{{- include "tunery.databaseUrlEnv" . }}
{{- include "tunery.s3SecretEnv" . }}
{{- end }}

{{/* The S3 credentials (also vLLM's: its LoRA resolver reads adapters from the object store). */}}
{{- define "tunery.s3SecretEnv" -}}
{{- if .Values.objectStore.s3.existingSecret }}
- name: TUNERY_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.objectStore.s3.existingSecret }}
      key: {{ .Values.objectStore.s3.accessKeyIdKey }}
- name: TUNERY_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.objectStore.s3.existingSecret }}
      key: {{ .Values.objectStore.s3.secretAccessKeyKey }}
{{- else if .Values.objectStore.s3.accessKeyId }}
- name: TUNERY_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "tunery.fullname" . }}
      key: s3-access-key-id
- name: TUNERY_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "tunery.fullname" . }}
      key: s3-secret-access-key
{{- end }}
{{- end }}

{{/* TUNERY_API_KEYS, for the API container only. */}}
{{- define "tunery.apiKeysEnv" -}}
{{- if .Values.auth.existingSecret }}
- name: TUNERY_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.existingSecret }}
      key: {{ .Values.auth.existingSecretKey }}
{{- else if .Values.auth.apiKeys }}
- name: TUNERY_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "tunery.fullname" . }}
      key: api-keys
{{- end }}
{{- end }}

{{/* Checks that cannot be said in values.schema.json. */}}
{{- define "tunery.validate" -}}
{{- if not (or .Values.auth.apiKeys .Values.auth.existingSecret .Values.auth.allowOpen) }}
{{- fail "auth: the API needs API keys: set auth.apiKeys, or auth.existingSecret (a Secret holding them), or auth.allowOpen=true for an API that anyone who reaches it may use without a key (dangerous)" }}
{{- end }}
{{- $sources := 0 }}
{{- if .Values.database.url }}{{ $sources = add1 $sources }}{{ end }}
{{- if .Values.database.existingSecret }}{{ $sources = add1 $sources }}{{ end }}
{{- if .Values.postgresql.enabled }}{{ $sources = add1 $sources }}{{ end }}
{{- if gt (int $sources) 1 }}
{{- fail "set only one of database.url, database.existingSecret and postgresql.enabled" }}
{{- end }}
{{- if and .Values.postgresql.enabled (not .Values.postgresql.auth.password) }}
{{- fail "postgresql.enabled needs postgresql.auth.password" }}
{{- end }}
{{- if and (eq .Values.training.objectAccess "direct") .Values.objectStore.s3.existingSecret .Values.training.credentials.create (not .Values.training.credentials.existingSecret) }}
{{- fail "objectStore.s3.existingSecret is set with training.objectAccess=direct: name the trainer pods' Secret (in the training namespace) in training.credentials.existingSecret" }}
{{- end }}
{{- if and .Values.vllm.enabled (not (hasKey .Values.config.baseModels .Values.vllm.servedModelName)) }}
{{- fail "vllm.enabled: set vllm.servedModelName to the key of config.baseModels that vLLM serves (the API sends that name)" }}
{{- end }}
{{- if and .Values.scheduler.reportingTls.enabled (not (and .Values.scheduler.reportingTls.serverSecret .Values.scheduler.reportingTls.trainerSecret)) }}
{{- fail "scheduler.reportingTls.enabled needs scheduler.reportingTls.serverSecret (release namespace) and scheduler.reportingTls.trainerSecret (training namespace)" }}
{{- end }}
{{- if and .Values.api.grpc.tls.enabled (not .Values.api.grpc.tls.secret) }}
{{- fail "api.grpc.tls.enabled needs api.grpc.tls.secret (a Secret in the release namespace with tls.crt and tls.key)" }}
{{- end }}
{{- if and (gt (int .Values.scheduler.replicaCount) 1) (not .Values.scheduler.leaderElection) }}
{{- fail "scheduler.replicaCount > 1 needs scheduler.leaderElection" }}
{{- end }}
{{- end }}
