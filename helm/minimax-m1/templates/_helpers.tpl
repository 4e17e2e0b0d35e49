{{/* Names, truncated to 63 characters (the DNS label limit). */}}
{{- define "minimax-m1.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "minimax-m1.fullname" -}}
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

{{- define "minimax-m1.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The RayService; KubeRay derives its RayCluster and service names from it, so keep it short. */}}
{{- define "minimax-m1.rayServiceName" -}}
{{- include "minimax-m1.fullname" . | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* The Serve service the gateway forwards to (gRPC on 9000). */}}
{{- define "minimax-m1.serveServiceName" -}}
{{- printf "%s-serve" (include "minimax-m1.rayServiceName" .) }}
{{- end }}

{{- define "minimax-m1.gatewayName" -}}
{{- printf "%s-gateway" (include "minimax-m1.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "minimax-m1.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "minimax-m1.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "minimax-m1.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "minimax-m1.labels" -}}
helm.sh/chart: {{ include "minimax-m1.chart" . }}
{{ include "minimax-m1.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "minimax-m1.selectorLabels" -}}
app.kubernetes.io/name: {{ include "minimax-m1.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The plan, derived once: pods per model instance of each worker group, GPUs per pod, and the
worker-group replica bounds (pods per instance x Serve replicas). Returned as YAML; use with
`include "minimax-m1.plan" . | fromYaml`.
*/}}
{{- define "minimax-m1.plan" -}}
{{- $p := .Values.plan }}
{{- $wg := .Values.ray.workerGroups }}
{{- $a := .Values.autoscaling }}
{{- $specs := list }}
{{- if eq $p.placement "colocated" }}
{{- $specs = append $specs (list "workers" "colocated" $wg.attention $p.tp $p.gpusPerAttentionWorker) }}
{{- else }}
{{- $specs = append $specs (list "attention" "attention" $wg.attention $p.tp $p.gpusPerAttentionWorker) }}
{{- $specs = append $specs (list "experts" "experts" $wg.experts $p.ep $p.gpusPerExpertWorker) }}
{{- end }}
groups:
{{- range $specs }}
{{- $values := index . 2 }}{{ $workers := int (index . 3) }}{{ $gpusPerWorker := int (index . 4) }}
{{- $gpusPerPod := int $values.gpusPerPod }}
{{- /* GPU pods hold gpusPerPod / gpusPerWorker workers; CPU pods hold workersPerPod. */}}
{{- $workersPerPod := int (default 1 $values.workersPerPod) }}
{{- if gt $gpusPerPod 0 }}{{ $workersPerPod = div $gpusPerPod (max 1 $gpusPerWorker) }}{{ end }}
{{- $pods := div $workers (max 1 $workersPerPod) }}
  - name: {{ index . 0 }}
    role: {{ index . 1 }}
    workers: {{ $workers }}
    gpusPerPod: {{ $gpusPerPod }}
    gpusPerWorker: {{ $gpusPerWorker }}
    workersPerPod: {{ $workersPerPod }}
    podsPerInstance: {{ $pods }}
    replicas: {{ mul $pods $a.initial_replicas }}
    minReplicas: {{ mul $pods $a.min_replicas }}
    maxReplicas: {{ mul $pods $a.max_replicas }}
{{- end }}
{{- end }}

{{/*
Cross-field rules that values.schema.json cannot express. Each failure names the values to change.
*/}}
{{- define "minimax-m1.validate" -}}
{{- $p := .Values.plan }}
{{- $m := .Values.model }}
{{- $wg := .Values.ray.workerGroups }}
{{- $a := .Values.autoscaling }}
{{- if mod (int $m.numAttentionHeads) (int $p.tp) }}
{{- fail (printf "plan.tp=%d must divide model.numAttentionHeads=%d: each tensor-parallel rank holds an equal share of the attention heads" (int $p.tp) (int $m.numAttentionHeads)) }}
{{- end }}
{{- if mod (int $m.numExperts) (int $p.ep) }}
{{- fail (printf "plan.ep=%d must divide model.numExperts=%d: each expert-parallel rank holds an equal share of the experts" (int $p.ep) (int $m.numExperts)) }}
{{- end }}
{{- if and (eq $p.placement "colocated") (ne (int $p.tp) (int $p.ep)) }}
{{- fail (printf "plan.placement=colocated puts attention rank r and expert rank r in one worker, so plan.tp (%d) must equal plan.ep (%d)" (int $p.tp) (int $p.ep)) }}
{{- end }}
{{- range (include "minimax-m1.plan" . | fromYaml).groups }}
{{- if and (gt (int .gpusPerPod) 0) (eq (int .gpusPerWorker) 0) }}
{{- fail (printf "ray.workerGroups: the %s group has gpusPerPod=%d but the plan gives its workers 0 GPUs; set plan.gpusPer*Worker or gpusPerPod=0 for CPU pods" .name (int .gpusPerPod)) }}
{{- end }}
{{- if and (eq (int .gpusPerPod) 0) (gt (int .gpusPerWorker) 0) }}
{{- fail (printf "ray.workerGroups: the %s group has gpusPerPod=0 (CPU pods) but the plan gives each worker %d GPUs" .name (int .gpusPerWorker)) }}
{{- end }}
{{- if and (gt (int .gpusPerPod) 0) (mod (int .gpusPerPod) (int .gpusPerWorker)) }}
{{- fail (printf "ray.workerGroups: the %s group's gpusPerPod=%d must be a multiple of the GPUs per worker (%d)" .name (int .gpusPerPod) (int .gpusPerWorker)) }}
{{- end }}
{{- if mod (int .workers) (int .workersPerPod) }}
{{- fail (printf "ray.workerGroups: the %s group has %d workers per model instance, which do not fill whole pods of %d workers (%d GPUs each); pick gpusPerPod (or workersPerPod for CPU pods) so that it divides them" .name (int .workers) (int .workersPerPod) (int .gpusPerPod)) }}
{{- end }}
{{- end }}
{{- if not (and (le (int $a.min_replicas) (int $a.initial_replicas)) (le (int $a.initial_replicas) (int $a.max_replicas))) }}
{{- fail (printf "autoscaling needs min_replicas (%d) <= initial_replicas (%d) <= max_replicas (%d)" (int $a.min_replicas) (int $a.initial_replicas) (int $a.max_replicas)) }}
{{- end }}
{{- if lt (int .Values.engine.maxBatchTokens) (int .Values.engine.prefillChunkSize) }}
{{- fail (printf "engine.prefillChunkSize (%d) cannot exceed engine.maxBatchTokens (%d): one chunk must fit in a step" (int .Values.engine.prefillChunkSize) (int .Values.engine.maxBatchTokens)) }}
{{- end }}
{{- if gt (int .Values.engine.maxNumSeqs) (int .Values.engine.numStateSlots) }}
{{- fail (printf "engine.maxNumSeqs (%d) cannot exceed engine.numStateSlots (%d): every running sequence holds a lightning-attention state slot" (int .Values.engine.maxNumSeqs) (int .Values.engine.numStateSlots)) }}
{{- end }}
{{- if and (gt (int .Values.gateway.replicas) 1) (not .Values.gateway.redis.secretName) }}
{{- fail "gateway.replicas > 1 needs gateway.redis.secretName: the in-memory quota store is per replica, so quotas would be multiplied by the replica count" }}
{{- end }}
{{- if and .Values.gateway.autoscaling.enabled (gt (int .Values.gateway.autoscaling.maxReplicas) 1) (not .Values.gateway.redis.secretName) }}
{{- fail "gateway.autoscaling.maxReplicas > 1 needs gateway.redis.secretName: the in-memory quota store is per replica" }}
{{- end }}
{{- if and (hasPrefix "pvc://" $m.uri) (not $m.storage.claimName) (not $m.demoCheckpoint.enabled) }}
{{- fail (printf "model.uri=%s reads the weights from a volume: set model.storage.claimName to the PersistentVolumeClaim holding them (or use an hf:// URI)" $m.uri) }}
{{- end }}
{{- if and (hasPrefix "hf://" $m.uri) $m.demoCheckpoint.enabled }}
{{- fail "model.demoCheckpoint.enabled writes a random checkpoint; it cannot be combined with an hf:// model.uri" }}
{{- end }}
{{- end }}

{{/* The model path the engine loads: hf:// ids are downloaded onto the models volume first. */}}
{{- define "minimax-m1.modelLocalUri" -}}
{{- if hasPrefix "hf://" .Values.model.uri }}
{{- printf "pvc:///models/%s" (trimPrefix "hf://" .Values.model.uri) }}
{{- else }}
{{- .Values.model.uri }}
{{- end }}
{{- end }}

{{/* Ray Serve config (serveConfigV2): one application, gRPC on 9000. */}}
{{- define "minimax-m1.serveConfig" -}}
{{- $e := .Values.engine }}
{{- $p := .Values.plan }}
grpc_options:
  port: 9000
  grpc_servicer_functions:
    - minimax_m1._generated.generation_pb2_grpc.add_GenerationServicer_to_server
http_options:
  host: 0.0.0.0
  port: 8000
applications:
  - name: minimax-m1
    route_prefix: /
    import_path: minimax_m1.serving.app:build_app
    args:
      model:
        uri: {{ include "minimax-m1.modelLocalUri" . | quote }}
        name: {{ .Values.model.name | quote }}
      plan:
        tp: {{ int $p.tp }}
        ep: {{ int $p.ep }}
        placement: {{ $p.placement }}
        gpus_per_attention_worker: {{ int $p.gpusPerAttentionWorker }}
        gpus_per_expert_worker: {{ int $p.gpusPerExpertWorker }}
      engine:
        max_num_seqs: {{ int $e.maxNumSeqs }}
        max_batch_tokens: {{ int $e.maxBatchTokens }}
        prefill_chunk_size: {{ int $e.prefillChunkSize }}
        kv_block_size: {{ int $e.kvBlockSize }}
        num_kv_blocks: {{ int $e.numKvBlocks }}
        num_state_slots: {{ int $e.numStateSlots }}
      autoscaling_config:
        {{- toYaml .Values.autoscaling | nindent 8 }}
{{- end }}

{{/* Environment shared by every Ray container. */}}
{{- define "minimax-m1.rayEnv" -}}
- name: HOME
  value: /tmp
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: MINIMAX_M1_METRICS_PORT
  value: {{ .Values.ray.engineMetricsPort | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
{{- with .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.ray.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes of every Ray pod: writable /tmp (the root fs is read-only), /dev/shm, the models. */}}
{{- define "minimax-m1.rayVolumes" -}}
- name: tmp
  emptyDir: {}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.ray.shmSize }}
- name: models
{{- if .Values.model.storage.claimName }}
  persistentVolumeClaim:
    claimName: {{ .Values.model.storage.claimName }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.model.storage.sizeLimit }}
{{- end }}
{{- end }}

{{- define "minimax-m1.rayVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
- name: models
  mountPath: /models
  readOnly: true
{{- end }}

{{/*
Init container that puts the weights on the models volume, when they are not already there:
hf:// ids are downloaded with huggingface_hub; the CPU demo writes a tiny random checkpoint.
*/}}
{{- define "minimax-m1.modelInitContainers" -}}
{{- $m := .Values.model }}
{{- if or (hasPrefix "hf://" $m.uri) $m.demoCheckpoint.enabled }}
- name: fetch-model
  image: {{ include "minimax-m1.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if hasPrefix "hf://" $m.uri }}
  command: ["python", "-c"]
  args:
    - |
      import os, sys
      from huggingface_hub import snapshot_download
      repo, target = sys.argv[1], sys.argv[2]
      snapshot_download(repo_id=repo, revision=os.environ.get("HF_REVISION") or None, local_dir=target)
    - {{ trimPrefix "hf://" $m.uri | quote }}
    - {{ printf "/models/%s" (trimPrefix "hf://" $m.uri) | quote }}
  {{- else }}
  command: ["minimax-m1", "make-checkpoint"]
  args:
    - {{ trimPrefix "pvc://" $m.uri | quote }}
    {{- with $m.demoCheckpoint.args }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  env:
    - name: HOME
      value: /tmp
    - name: HF_HOME
      value: /tmp/hf
    - name: HF_REVISION
      value: {{ $m.revision | quote }}
    {{- with $m.hfTokenSecret }}
    - name: HF_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ .name }}
          key: {{ .key }}
    {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: models
      mountPath: /models
{{- end }}
{{- end }}
