{{/*
Naming, labels and shared snippets of the visual-search chart.
Helpers taking more than the root context take a dict: (dict "root" $ ...).
*/}}

{{/* Chart name (nameOverride wins). */}}
{{- define "vs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every resource: "<release>-<chart>" unless the release already contains the chart name. */}}
{{- define "vs.fullname" -}}
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

{{/* "chart-version" label value. */}}
{{- define "vs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the release (stable: never add changing values here). */}}
{{- define "vs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "vs.labels" -}}
helm.sh/chart: {{ include "vs.chart" . }}
{{ include "vs.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: visual-search
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "vs.componentSelectorLabels" -}}
{{ include "vs.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "vs.componentLabels" -}}
{{ include "vs.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of one shard's pods: (dict "root" $ "shard" 0). */}}
{{- define "vs.shardSelectorLabels" -}}
{{ include "vs.componentSelectorLabels" (dict "root" .root "component" "shard") }}
visual-search.io/shard: {{ .shard | quote }}
{{- end }}

{{/* Component resource names. */}}
{{- define "vs.gatewayName" -}}
{{- printf "%s-gateway" (include "vs.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}
{{- define "vs.tritonName" -}}
{{- printf "%s-triton" (include "vs.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}
{{- define "vs.canaryName" -}}
{{- printf "%s-canary" (include "vs.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{/*
StatefulSet (and headless Service) name of shard i: (dict "root" $ "shard" i).
Kept short: pod names append "-<replica>" and the controller-revision-hash label appends a hash.
*/}}
{{- define "vs.shardName" -}}
{{- printf "%s-shard-%d" (include "vs.fullname" .root | trunc 40 | trimSuffix "-") (int .shard) }}
{{- end }}

{{/* Stable DNS address host:port of replica r of shard i: (dict "root" $ "shard" i "replica" r). */}}
{{- define "vs.shardReplicaAddress" -}}
{{- $name := include "vs.shardName" . -}}
{{- printf "%s-%d.%s.%s.svc.%s:%d" $name (int .replica) $name .root.Release.Namespace .root.Values.clusterDomain (int .root.Values.shards.port) }}
{{- end }}

{{/* The shard map as a list of lists (JSON): shards[i] = addresses of every replica of shard i. */}}
{{- define "vs.shardMap" -}}
{{- $root := . -}}
{{- $shards := list -}}
{{- range $i := until (int .Values.shards.count) }}
{{- $replicas := list -}}
{{- range $r := until (int $root.Values.shards.replicas) }}
{{- $replicas = append $replicas (include "vs.shardReplicaAddress" (dict "root" $root "shard" $i "replica" $r)) -}}
{{- end }}
{{- $shards = append $shards $replicas -}}
{{- end }}
{{- toJson $shards }}
{{- end }}

{{/* The shard map as a `--shards` string: replicas joined by ",", shards by ";". */}}
{{- define "vs.shardSpec" -}}
{{- $groups := list -}}
{{- range (include "vs.shardMap" . | fromJsonArray) }}
{{- $groups = append $groups (join "," .) -}}
{{- end }}
{{- join ";" $groups }}
{{- end }}

{{/* Triton gRPC address the gateway uses ("" = no Triton). */}}
{{- define "vs.tritonUrl" -}}
{{- if .Values.gateway.tritonUrl }}
{{- .Values.gateway.tritonUrl }}
{{- else if .Values.triton.enabled }}
{{- printf "%s.%s.svc.%s:%d" (include "vs.tritonName" .) .Release.Namespace .Values.clusterDomain (int .Values.triton.grpcPort) }}
{{- end }}
{{- end }}

{{/* Image reference of the vsearch services. */}}
{{- define "vs.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "vs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vs.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the auth token. */}}
{{- define "vs.shardAuthSecretName" -}}
{{- default (printf "%s-shard-auth" (include "vs.fullname" . | trunc 52 | trimSuffix "-")) .Values.shardAuth.existingSecret }}
{{- end }}

{{/*
Shard token mount (volume + mount + env): the file every SearchShard caller and server reads.
*/}}
{{- define "vs.shardTokenDir" -}}/etc/vsearch/shard-auth{{- end }}
{{- define "vs.shardTokenEnv" -}}
- name: VSEARCH_SHARD_TOKEN_FILE
  value: {{ printf "%s/%s" (include "vs.shardTokenDir" .) .Values.shardAuth.secretKey | quote }}
{{- end }}
{{- define "vs.shardTokenMount" -}}
- name: shard-auth
  mountPath: {{ include "vs.shardTokenDir" . }}
  readOnly: true
{{- end }}
{{- define "vs.shardTokenVolume" -}}
- name: shard-auth
  secret:
    secretName: {{ include "vs.shardAuthSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.shardAuth.secretKey }}
        path: {{ .Values.shardAuth.secretKey }}
{{- end }}

{{- define "vs.authSecretName" -}}
{{- default (printf "%s-auth" (include "vs.fullname" . | trunc 58 | trimSuffix "-")) .Values.auth.existingSecret }}
{{- end }}

{{/*
failureThreshold of a startup probe allowing maxSeconds at periodSeconds: ceil(max / period).
(dict "max" 600 "period" 10)
*/}}
{{- define "vs.startupFailureThreshold" -}}
{{- $max := int .max -}}
{{- $period := int .period -}}
{{- div (add $max (sub $period 1)) $period }}
{{- end }}

{{/*
Pod anti-affinity across nodes for pods matching labels.
(dict "mode" "soft|hard|none" "labels" <yaml string of selector labels>)
*/}}
{{- define "vs.podAntiAffinity" -}}
{{- if eq .mode "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- .labels | nindent 10 }}
{{- else if eq .mode "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- .labels | nindent 12 }}
{{- end }}
{{- end }}

{{/* Container security context (non-root, read-only root fs, no capabilities). */}}
{{- define "vs.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* Fail early on inconsistent values the schema cannot express. */}}
{{- define "vs.validate" -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled requires tls.existingSecret (a kubernetes.io/tls Secret)" }}
{{- end }}
{{- if and .Values.triton.enabled (eq .Values.triton.modelRepository.source "s3") (not .Values.triton.modelRepository.s3.uri) }}
{{- fail "triton.modelRepository.source=s3 requires triton.modelRepository.s3.uri" }}
{{- end }}
{{- if and .Values.triton.enabled (eq .Values.triton.modelRepository.source "pvc") (not .Values.triton.modelRepository.pvc.claimName) }}
{{- fail "triton.modelRepository.source=pvc requires triton.modelRepository.pvc.claimName" }}
{{- end }}
{{- if and .Values.gateway.autoscaling.enabled (lt (int .Values.gateway.autoscaling.maxReplicas) (int .Values.gateway.autoscaling.minReplicas)) }}
{{- fail "gateway.autoscaling.maxReplicas must be >= gateway.autoscaling.minReplicas" }}
{{- end }}
{{- if and .Values.canary.enabled (not .Values.canary.existingConfigMap) (not .Values.canary.probes) }}
{{- fail "canary.enabled requires canary.probes or canary.existingConfigMap" }}
{{- end }}
{{- end }}
