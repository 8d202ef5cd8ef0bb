{{/* Names, as bitnami-style charts have them: every object starts with the release's full name, so two
     releases live side by side in one namespace. fullnameOverride replaces it; a release whose name
     already contains the chart's name (nameOverride, default "keel") is used as it is. */}}
{{- define "keel.name" -}}{{ default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "keel.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{ .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else -}}
{{- $name := include "keel.name" . -}}
{{- if contains $name .Release.Name -}}
{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}
{{ printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end -}}
{{- end -}}
{{- end -}}
{{/* One model's objects (InferenceService, RayService, drift CronJob, ScaledObject), release-prefixed;
     call with (list $ model). A name Kubernetes would refuse fails here, naming the model. */}}
{{- define "keel.modelObject" -}}
{{- $name := printf "%s-%s" (include "keel.fullname" (index . 0)) ((index . 1).name | replace "_" "-") -}}
{{- if gt (len $name) 47 -}}
{{- fail (printf "models[%s]: object name %q is %d characters; at most 47 leave room for the suffixes KServe, KubeRay and CronJobs add. Shorten the release name, or set fullnameOverride" (index . 1).name $name (len $name)) -}}
{{- end -}}
{{ $name }}
{{- end -}}
{{/* A PriorityClass's name (cluster-scoped): the release's own, "<fullname>-<role>", unless the values
     name one; call with (list $ "serving"|"experiments"). */}}
{{- define "keel.priorityClass" -}}
{{- $ := index . 0 -}}{{- $role := index . 1 -}}
{{- (index $.Values.priorityClasses $role).name | default (printf "%s-%s" (include "keel.fullname" $) $role) -}}
{{- end -}}
{{/* A model's serving pods: its own priorityClassName, else the release's serving class when the release
     creates its classes; call with (list $ model). */}}
{{- define "keel.modelPriorityClass" -}}
{{- $ := index . 0 -}}{{- $m := index . 1 -}}
{{- if $m.priorityClassName -}}{{ $m.priorityClassName }}
{{- else if $.Values.priorityClasses.create -}}{{ include "keel.priorityClass" (list $ "serving") }}
{{- end -}}
{{- end -}}
{{- define "keel.tag" -}}{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "keel.platformImage" -}}"{{ .Values.image.platform }}:{{ include "keel.tag" . }}"{{- end -}}
{{- define "keel.servingImage" -}}"{{ .Values.image.serving }}:{{ include "keel.tag" . }}"{{- end -}}
{{- define "keel.labels" -}}
app.kubernetes.io/name: keel
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{/* Labels of one component; call with (list $ "component"). */}}
{{- define "keel.componentLabels" -}}
{{ include "keel.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}
{{- define "keel.selector" -}}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}
{{- define "keel.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "keel.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
{{- define "keel.pullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}
{{- define "keel.svc" -}}{{ printf "%s-%s.%s.svc.cluster.local" (include "keel.fullname" (index . 0)) (index . 1) (index . 0).Release.Namespace }}{{- end -}}
{{/* A database URI from the bundled Postgres (password expanded from $(KEEL_POSTGRES_PASSWORD)) or the
     external Secret; call with (list $ "database" "external key"). */}}
{{- define "keel.dbEnv" -}}
{{- $ := index . 0 -}}
{{- if $.Values.postgres.enabled -}}
value: "postgresql+psycopg://{{ $.Values.postgres.user }}:$(KEEL_POSTGRES_PASSWORD)@{{ include "keel.svc" (list $ "postgres") }}:{{ $.Values.postgres.port }}/{{ index . 1 }}"
{{- else -}}
valueFrom:
  secretKeyRef: {name: {{ required "externalDatabase.secret is required when postgres.enabled is false" $.Values.externalDatabase.secret }}, key: {{ index . 2 }}}
{{- end -}}
{{- end -}}
{{- define "keel.postgresPasswordEnv" -}}
{{- if .Values.postgres.enabled }}
- name: KEEL_POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.postgres.passwordSecret }}, key: password}
{{- end }}
{{- end -}}
{{/* keel's plain settings (KEEL_* without secrets), as a map: the release's "<fullname>-env" ConfigMap
     holds them for the DAG pods (envFrom), and keel.env lists them for the chart's own pods. */}}
{{- define "keel.settings" -}}
KEEL_PROFILE: cluster
KEEL_RELEASE: {{ .Release.Name | quote }}
KEEL_FULLNAME: {{ include "keel.fullname" . | quote }}
KEEL_NAMESPACE: {{ .Release.Namespace | quote }}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.cluster }}
{{- fail "redis.cluster needs an external Redis Cluster: set redis.enabled false and redis.externalAddress to its nodes (host:port,host:port,...)" }}
{{- end }}
KEEL_REDIS_ADDRESS: "{{ include "keel.svc" (list . "redis") }}:{{ .Values.redis.port }}"
{{- else }}
KEEL_REDIS_ADDRESS: {{ required "redis.externalAddress is required when redis.enabled is false" .Values.redis.externalAddress | quote }}
{{- end }}
KEEL_REDIS_TYPE: {{ ternary "redis_cluster" "redis" (.Values.redis.cluster | default false) | quote }}
KEEL_MLFLOW_URI: "http://{{ include "keel.svc" (list . "mlflow") }}:{{ .Values.mlflow.port }}"
{{- if not .Values.pushgateway.enabled }}
KEEL_PUSHGATEWAY: {{ required "pushgateway.externalUrl is required when pushgateway.enabled is false" .Values.pushgateway.externalUrl | quote }}
{{- end }}
KEEL_DEPLOY_TARGET: {{ .Values.airflow.pipelines.deployTarget | quote }}
KEEL_PREDICTIONS_URI: {{ .Values.predictionLog.uri | default "/var/lib/keel/predictions" | quote }}
KEEL_OUTCOMES_URI: {{ .Values.predictionLog.outcomesUri | default (printf "%s/_outcomes" (.Values.predictionLog.uri | default "/var/lib/keel/predictions" | trimSuffix "/")) | quote }}
{{- end -}}
{{/* The secret half: references to the Secrets the values name (never their contents). */}}
{{- define "keel.secretEnv" -}}
- name: KEEL_REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.redis.passwordSecret }}, key: password}
{{- include "keel.postgresPasswordEnv" . }}
- name: KEEL_FEAST_REGISTRY
  {{- include "keel.dbEnv" (list . "feast" "feast") | nindent 2 }}
- name: KEEL_AUDIT_DB
  {{- include "keel.dbEnv" (list . "keel" "keel") | nindent 2 }}
{{- if .Values.mlflow.auth.enabled }}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ .Values.mlflow.auth.secret }}, key: username}
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.mlflow.auth.secret }}, key: password}
{{- end }}
{{- end -}}
{{/* What every keel process needs to find the platform: the cluster profile, Redis, the Feast
     registry, the audit database and MLflow credentials. */}}
{{- define "keel.env" -}}
{{- range $k, $v := fromYaml (include "keel.settings" .) }}
- {name: {{ $k }}, value: {{ $v | quote }}}
{{- end }}
{{ include "keel.secretEnv" . }}
{{- end -}}
{{- define "keel.modelName" -}}{{ .name | replace "_" "-" }}{{- end -}}
{{- define "keel.minReplicas" -}}{{ if hasKey . "minReplicas" }}{{ .minReplicas }}{{ else }}1{{ end }}{{- end -}}
{{/* The ServeSpec (keel.serving.spec) of one model, as JSON; call with (list $ model runtime port). */}}
{{- define "keel.serveSpec" -}}
{{- $ := index . 0 }}{{- $m := index . 1 }}
{{- $spec := dict "model" $m.name "alias" ($m.alias | default "champion") "runtime" (index . 2) "port" (index . 3) "predlog_uri" ($.Values.predictionLog.uri | default "/var/lib/keel/predictions") "sample_rate" $.Values.predictionLog.sampleRate "min_replicas" (int (include "keel.minReplicas" $m)) "max_replicas" (int ($m.maxReplicas | default 1)) }}
{{- with $m.version }}{{- $_ := set $spec "version" (toString .) }}{{- end }}
{{- with $m.canary }}{{- $_ := set $spec "canary_alias" .alias }}{{- $_ := set $spec "canary_weight" (divf (.percent | default 10) 100) }}{{- if hasKey . "sticky" }}{{- $_ := set $spec "sticky" .sticky }}{{- end }}{{- with .stickyKey }}{{- $_ := set $spec "sticky_key" . }}{{- end }}{{- end }}
{{- with $m.maxInflight }}{{- $_ := set $spec "max_inflight" (int .) }}{{- end }}
{{- with $m.featureCache }}{{- if hasKey . "ttlSeconds" }}{{- $_ := set $spec "cache_ttl_s" (float64 .ttlSeconds) }}{{- end }}{{- with .entities }}{{- $_ := set $spec "cache_size" (int .) }}{{- end }}{{- if hasKey . "staleSeconds" }}{{- $_ := set $spec "cache_stale_s" (float64 .staleSeconds) }}{{- end }}{{- end }}
{{- with $m.batching }}{{- with .maxSize }}{{- $_ := set $spec "batch_max_size" (int .) }}{{- end }}{{- if hasKey . "waitMs" }}{{- $_ := set $spec "batch_wait_s" (divf .waitMs 1000) }}{{- end }}{{- end }}
{{- with $m.fallback }}{{- $_ := set $spec "fallback" (toString .) }}{{- end }}
{{- with $m.priorities }}{{- $_ := set $spec "priorities" . }}{{- end }}
{{- if and $m.gpu $m.gpu.enabled }}{{- $_ := set $spec "gpu" true }}{{- end }}
{{- if gt (float64 ($m.numGpus | default 0)) 0.0 }}{{- $_ := set $spec "gpu" true }}{{- $_ := set $spec "num_gpus" $m.numGpus }}{{- end }}
{{- toJson $spec }}
{{- end -}}
{{/* A Ray model's ingress: Ray Serve's throughput-optimized mode (HAProxy on each pod's port 8000 in
     front of the replicas' own HTTP servers, Ray 2.56+), unless the model asks for Ray's Python proxy. */}}
{{- define "keel.rayIngressEnv" -}}
{{- if ne (.rayIngress | default "haproxy") "proxy" }}
- {name: RAY_SERVE_THROUGHPUT_OPTIMIZED, value: "1"}
- {name: RAY_SERVE_ENABLE_HA_PROXY, value: "1"}
{{- end }}
{{- end -}}
{{- define "keel.predlogMount" -}}
{{- if not .Values.predictionLog.uri }}
- {name: predictions, mountPath: /var/lib/keel/predictions}
{{- end }}
{{- end -}}
{{- define "keel.predlogVolume" -}}
{{- if not .Values.predictionLog.uri }}
- name: predictions
  persistentVolumeClaim: {claimName: {{ include "keel.fullname" . }}-predictions}
{{- end }}
{{- end -}}
{{/* The pod every DAG step starts from (KubernetesPodOperator's pod_template_dict): the platform image,
     the release's settings and Secrets, the pipeline ServiceAccount, keel's security context. The DAG
     adds the command, the step's labels and the model's training resources. */}}
{{- define "keel.pipelinePod" -}}
apiVersion: v1
kind: Pod
metadata:
  namespace: {{ .Release.Namespace }}
  labels: {{- include "keel.componentLabels" (list . "pipeline") | nindent 4 }}
spec:
  serviceAccountName: {{ include "keel.fullname" . }}-pipeline
  automountServiceAccountToken: true
  restartPolicy: Never
  securityContext: {{- include "keel.podSecurity" . | nindent 4 }}
  {{- include "keel.pullSecrets" . | nindent 2 }}
  containers:
    - name: base
      image: {{ include "keel.platformImage" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      envFrom:
        - configMapRef: {name: {{ include "keel.fullname" . }}-env}
        {{- with .Values.trainingSets.s3Secret }}
        - secretRef: {name: {{ . }}}
        {{- end }}
      env:
        - {name: KEEL_SNAPSHOT_URI, value: {{ .Values.trainingSets.uri | default "/var/lib/keel/training-sets" | quote }}}
        - {name: KEEL_RAYJOB_TEMPLATE, value: /etc/keel/rayjob/rayjob.json}
        {{- include "keel.secretEnv" . | nindent 8 }}
      resources: {{- toYaml .Values.airflow.pipelines.resources | nindent 8 }}
      securityContext: {{- include "keel.containerSecurity" . | nindent 8 }}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        - {name: rayjob, mountPath: /etc/keel/rayjob, readOnly: true}
        {{- if not .Values.trainingSets.uri }}
        - {name: training-sets, mountPath: /var/lib/keel/training-sets}
        {{- end }}
  volumes:
    - {name: tmp, emptyDir: {}}
    - name: rayjob
      configMap: {name: {{ include "keel.fullname" . }}-rayjob}
    {{- if not .Values.trainingSets.uri }}
    - name: training-sets
      persistentVolumeClaim: {claimName: {{ include "keel.fullname" . }}-training-sets}
    {{- end }}
{{- end -}}
{{/* One Ray node of a training RayJob; call with (list $ "ray-head"|"ray-worker" resources). Labelled as
the release's "train" component: the release's Redis, MLflow and Postgres admit it like a step pod. */}}
{{- define "keel.rayTrainNode" -}}
{{- $ := index . 0 }}
metadata:
  labels: {{- include "keel.selector" (list $ "train") | nindent 4 }}
spec:
  automountServiceAccountToken: false
  securityContext: {{- include "keel.podSecurity" $ | nindent 4 }}
  {{- include "keel.pullSecrets" $ | nindent 2 }}
  containers:
    - name: {{ index . 1 }}
      image: {{ include "keel.platformImage" $ }}
      imagePullPolicy: {{ $.Values.image.pullPolicy }}
      envFrom:
        - configMapRef: {name: {{ include "keel.fullname" $ }}-env}
        {{- with $.Values.trainingSets.s3Secret }}
        - secretRef: {name: {{ . }}}
        {{- end }}
      env:
        - {name: KEEL_SNAPSHOT_URI, value: {{ $.Values.trainingSets.uri | default "/var/lib/keel/training-sets" | quote }}}
        - {name: KEEL_RAY_ADDRESS, value: auto}
        - {name: RAY_AUTH_MODE, value: disabled}
        {{- include "keel.secretEnv" $ | nindent 8 }}
      resources: {{- toYaml (index . 2) | nindent 8 }}
      securityContext: {{- include "keel.containerSecurity" $ | nindent 8 }}
      volumeMounts:
        - {name: tmp, mountPath: /tmp}
        {{- if not $.Values.trainingSets.uri }}
        - {name: training-sets, mountPath: /var/lib/keel/training-sets}
        {{- end }}
  volumes:
    - {name: tmp, emptyDir: {}}
    {{- if not $.Values.trainingSets.uri }}
    - name: training-sets
      persistentVolumeClaim: {claimName: {{ include "keel.fullname" $ }}-training-sets}
    {{- end }}
{{- end -}}
{{/* The RayJob a model with training.ray trains in: keel (keel.rayjob) names it, sets the entrypoint
(`python -m keel.retrain train ...`), the worker count and their resources from the spec. HTTPMode: the
operator submits to the head itself, so there is no submitter pod to secure. */}}
{{- define "keel.rayJob" -}}
{{- $r := .Values.airflow.pipelines.rayJob }}
apiVersion: ray.io/v1
kind: RayJob
metadata:
  namespace: {{ .Release.Namespace }}
  labels: {{- include "keel.componentLabels" (list . "train") | nindent 4 }}
spec:
  entrypoint: ""
  submissionMode: HTTPMode
  shutdownAfterJobFinishes: true
  ttlSecondsAfterFinished: {{ $r.ttlSecondsAfterFinished }}
  activeDeadlineSeconds: {{ $r.activeDeadlineSeconds }}
  backoffLimit: 0
  rayClusterSpec:
    headGroupSpec:
      rayStartParams: {num-cpus: "0"}
      template: {{- include "keel.rayTrainNode" (list . "ray-head" $r.headResources) | nindent 8 }}
    workerGroupSpecs:
      - groupName: train
        replicas: 1
        minReplicas: 1
        maxReplicas: 1
        rayStartParams: {}
        template: {{- include "keel.rayTrainNode" (list . "ray-worker" .Values.airflow.pipelines.resources) | nindent 10 }}
{{- end -}}
