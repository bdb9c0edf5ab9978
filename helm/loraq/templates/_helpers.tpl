{{/* ---------------------------------------------------------------------------------------
Names and labels (Kubernetes recommended labels: app.kubernetes.io/*).
--------------------------------------------------------------------------------------- */}}

{{- define "loraq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loraq.fullname" -}}
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

{{- define "loraq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels for every object; `.` is the root context. */}}
{{- define "loraq.labels" -}}
helm.sh/chart: {{ include "loraq.chart" . }}
app.kubernetes.io/name: {{ include "loraq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loraq
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). Selectors are
immutable on Deployments, so they carry only what never changes (no version, no chart). */}}
{{- define "loraq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loraq.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loraq.componentLabels" -}}
{{ include "loraq.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A pool's selector labels: (dict "root" $ "pool" $pool). */}}
{{- define "loraq.poolSelectorLabels" -}}
{{ include "loraq.selectorLabels" (dict "root" .root "component" "worker") }}
loraq.dev/pool: {{ .pool.name }}
{{- end -}}

{{- define "loraq.poolLabels" -}}
{{ include "loraq.componentLabels" (dict "root" .root "component" "worker") }}
loraq.dev/pool: {{ .pool.name }}
loraq.dev/model: {{ include "loraq.modelSlug" .pool.model | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "loraq.gatewayName" -}}
{{- printf "%s-gateway" (include "loraq.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loraq.poolName" -}}
{{- printf "%s-worker-%s" (include "loraq.fullname" .root) .pool.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
Queues. Must produce exactly what common/keys.py does, because KEDA watches these lists:
  model_slug(m) = re.sub("[^a-z0-9]+", "-", m.lower()).strip("-")
  queue_list(q) = "loraq:celery:" + q;  model_queue(m) = "jobs." + slug;  shard k: ".<k>"
tests/unit/test_deploy.py compares the rendered names with common.keys itself.
--------------------------------------------------------------------------------------- */}}

{{- define "loraq.modelSlug" -}}
{{- regexReplaceAll "[^a-z0-9]+" (lower .) "-" | trimAll "-" -}}
{{- end -}}

{{/* The Redis list of a model's shared queue: (model id). */}}
{{- define "loraq.modelQueueList" -}}
{{- printf "loraq:celery:jobs.%s" (include "loraq.modelSlug" .) -}}
{{- end -}}

{{/* The Redis list of one shard queue: (list model shard). */}}
{{- define "loraq.shardQueueList" -}}
{{- printf "%s.%d" (include "loraq.modelQueueList" (index . 0)) (int (index . 1)) -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
Pools.
--------------------------------------------------------------------------------------- */}}

{{/* Deep merge, the second map winning: (list base override) -> YAML. Sprig's merge and
mergeOverwrite treat 0, false and "" in the winning map as unset, which would silently turn a
pool's `minReplicaCount: 0` or `enabled: false` back into the default. */}}
{{- define "loraq.deepMerge" -}}
{{- $out := deepCopy (index . 0) -}}
{{- range $key, $value := (index . 1) -}}
{{- $current := get $out $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- $_ := set $out $key (include "loraq.deepMerge" (list $current $value) | fromYaml) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Every pool merged over workers.defaults and checked for what the schema cannot express:
unique names, a configured model, a job bound within the visibility timeout. -> YAML list. */}}
{{- define "loraq.pools" -}}
{{- $root := . -}}
{{- $pools := list -}}
{{- $seen := dict -}}
{{- range $i, $raw := .Values.pools -}}
{{- $pool := include "loraq.deepMerge" (list $root.Values.workers.defaults $raw) | fromYaml -}}
{{- if hasKey $seen $pool.name -}}
{{- fail (printf "pools[%d]: the pool name %q is used twice; pool names must be unique" $i $pool.name) -}}
{{- end -}}
{{- $_ := set $seen $pool.name true -}}
{{- $_ := set $seen (printf "model:%s" $pool.model) true -}}
{{- if not (hasKey $root.Values.settings.models $pool.model) -}}
{{- fail (printf "pools[%d] (%s): model %q is not a key of settings.models (%s)" $i $pool.name $pool.model (keys $root.Values.settings.models | sortAlpha | join ", ")) -}}
{{- end -}}
{{- if gt (int $pool.shutdown.maxJobSeconds) (int $root.Values.settings.visibilityTimeoutS) -}}
{{- fail (printf "pools[%d] (%s): shutdown.maxJobSeconds (%d) exceeds settings.visibilityTimeoutS (%d): a job running that long would be redelivered to a second worker while the first still runs it" $i $pool.name (int $pool.shutdown.maxJobSeconds) (int $root.Values.settings.visibilityTimeoutS)) -}}
{{- end -}}
{{- if and $root.Values.keda.enabled (lt (int $pool.keda.maxReplicaCount) (int $pool.keda.minReplicaCount)) -}}
{{- fail (printf "pools[%d] (%s): keda.maxReplicaCount is below keda.minReplicaCount" $i $pool.name) -}}
{{- end -}}
{{- $pools = append $pools $pool -}}
{{- end -}}
{{- $slugs := dict -}}
{{- range $model, $_ := $root.Values.settings.models -}}
{{- $slug := include "loraq.modelSlug" $model -}}
{{- if hasKey $slugs $slug -}}
{{- fail (printf "settings.models: %q and %q would share the queue jobs.%s (queue names keep only [a-z0-9] runs of the model id)" (get $slugs $slug) $model $slug) -}}
{{- end -}}
{{- $_ := set $slugs $slug $model -}}
{{- if not (hasKey $seen (printf "model:%s" $model)) -}}
{{- fail (printf "settings.models has %q but no pool serves it: its jobs would be accepted and queue forever. Add a pool, or drop the model with `settings.models.%s: null`" $model $model) -}}
{{- end -}}
{{- end -}}
{{- toYaml $pools -}}
{{- end -}}

{{/* The worker's termination grace: (pool). */}}
{{- define "loraq.poolGraceSeconds" -}}
{{- add (int .shutdown.preStopSleepSeconds) (int .shutdown.maxJobSeconds) (int .shutdown.slackSeconds) -}}
{{- end -}}

{{/* A pool's image: (dict "root" $ "pool" $pool). The default tag follows the pool's device,
as the worker image is built per VARIANT (cpu / cuda). */}}
{{- define "loraq.poolImage" -}}
{{- $base := .root.Values.image.worker -}}
{{- $over := .pool.image | default dict -}}
{{- $repository := $over.repository | default $base.repository -}}
{{- $variant := ternary "cuda" "cpu" (eq .pool.device "cuda") -}}
{{- $tag := $over.tag | default $base.tag | default (printf "%s-%s" .root.Chart.AppVersion $variant) -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{- define "loraq.poolImagePullPolicy" -}}
{{- $over := .pool.image | default dict -}}
{{- $over.pullPolicy | default .root.Values.image.worker.pullPolicy -}}
{{- end -}}

{{- define "loraq.gatewayImage" -}}
{{- $image := .Values.image.gateway -}}
{{- printf "%s:%s" $image.repository ($image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
Redis and secrets.
--------------------------------------------------------------------------------------- */}}

{{- define "loraq.redisName" -}}
{{- printf "%s-redis" (include "loraq.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret that holds LORAQ_REDIS_URL: the user's, or the chart's own. */}}
{{- define "loraq.redisSecretName" -}}
{{- if and (not .Values.redis.internal.enabled) .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecret -}}
{{- else -}}
{{- include "loraq.redisName" . -}}
{{- end -}}
{{- end -}}

{{- define "loraq.redisUrlKey" -}}
{{- if and (not .Values.redis.internal.enabled) .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.urlKey -}}
{{- else -}}
redis-url
{{- end -}}
{{- end -}}

{{- define "loraq.redisHost" -}}
{{- printf "%s.%s.svc.%s" (include "loraq.redisName" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* The URL the chart writes into its own Secret (internal Redis or redis.external.url). */}}
{{- define "loraq.redisUrl" -}}
{{- if .Values.redis.internal.enabled -}}
{{- $auth := "" -}}
{{- with .Values.redis.internal.password -}}
{{- $auth = printf ":%s@" . -}}
{{- end -}}
{{- printf "redis://%s%s:6379/0" $auth (include "loraq.redisHost" .) -}}
{{- else if .Values.redis.external.url -}}
{{- .Values.redis.external.url -}}
{{- else if not .Values.redis.external.existingSecret -}}
{{- fail "Redis is not configured: set redis.external.url (stored in a Secret), redis.external.existingSecret (+ urlKey), or redis.internal.enabled=true" -}}
{{- end -}}
{{- end -}}

{{/* The password inside the chart's URL, if any (KEDA needs it separately). */}}
{{- define "loraq.redisUrlPassword" -}}
{{- if .Values.redis.internal.enabled -}}
{{- .Values.redis.internal.password -}}
{{- else if .Values.redis.external.url -}}
{{- $userinfo := (urlParse .Values.redis.external.url).userinfo -}}
{{- if contains ":" $userinfo -}}
{{- $userinfo | splitList ":" | rest | join ":" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Redis password for KEDA as "secretName/key", or "" when Redis has none. */}}
{{- define "loraq.redisPasswordRef" -}}
{{- if and (not .Values.redis.internal.enabled) .Values.redis.external.existingSecret -}}
{{- with .Values.redis.external.passwordKey -}}
{{- printf "%s/%s" $.Values.redis.external.existingSecret . -}}
{{- end -}}
{{- else if include "loraq.redisUrlPassword" . -}}
{{- printf "%s/redis-password" (include "loraq.redisName" .) -}}
{{- end -}}
{{- end -}}

{{/* The Sentinels' password as "secretName/key", or "" when they have none (or no Sentinel). */}}
{{- define "loraq.sentinelPasswordRef" -}}
{{- $s := .Values.redis.external.sentinel -}}
{{- if and $s.addresses (not .Values.redis.internal.enabled) -}}
{{- if and .Values.redis.external.existingSecret $s.passwordKey -}}
{{- printf "%s/%s" .Values.redis.external.existingSecret $s.passwordKey -}}
{{- else if and (not .Values.redis.external.existingSecret) $s.password -}}
{{- printf "%s/sentinel-password" (include "loraq.redisName" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether loraq and KEDA find Redis through Sentinels. */}}
{{- define "loraq.sentinel" -}}
{{- if and .Values.redis.external.sentinel.addresses (not .Values.redis.internal.enabled) -}}true{{- end -}}
{{- end -}}

{{/* host:port for KEDA's redis scaler (the Sentinels' host:port list for redis-sentinel). */}}
{{- define "loraq.kedaRedisAddress" -}}
{{- if .Values.keda.redis.address -}}
{{- .Values.keda.redis.address -}}
{{- else if include "loraq.sentinel" . -}}
{{- join "," .Values.redis.external.sentinel.addresses -}}
{{- else if .Values.redis.internal.enabled -}}
{{- printf "%s:6379" (include "loraq.redisHost" .) -}}
{{- else if .Values.redis.external.url -}}
{{- $host := (urlParse .Values.redis.external.url).host -}}
{{- if contains ":" $host -}}{{ $host }}{{- else -}}{{ printf "%s:6379" $host }}{{- end -}}
{{- else if .Values.redis.external.existingSecret -}}
{{- fail "keda.redis.address (host:port) is required with redis.external.existingSecret: the chart cannot read the Redis URL out of your Secret" -}}
{{- else -}}
{{- include "loraq.redisUrl" . -}}
{{- end -}}
{{- end -}}

{{/* Database index for KEDA: keda.redis.databaseIndex, or the path of redis.external.url. */}}
{{- define "loraq.kedaRedisDatabase" -}}
{{- $db := int .Values.keda.redis.databaseIndex -}}
{{- if and (not .Values.redis.internal.enabled) .Values.redis.external.url (eq $db 0) -}}
{{- $path := (urlParse .Values.redis.external.url).path | trimPrefix "/" -}}
{{- if regexMatch "^[0-9]+$" $path -}}{{- $db = int $path -}}{{- end -}}
{{- end -}}
{{- $db -}}
{{- end -}}

{{- define "loraq.kedaRedisTLS" -}}
{{- if or .Values.keda.redis.enableTLS (hasPrefix "rediss://" .Values.redis.external.url) -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{- define "loraq.appSecretName" -}}
{{- .Values.secrets.existingSecret | default (include "loraq.fullname" .) -}}
{{- end -}}

{{/* ---------------------------------------------------------------------------------------
Pod pieces shared by the gateway, the webhook worker and the worker pools.
--------------------------------------------------------------------------------------- */}}

{{/* LORAQ_REDIS_URL, from a Secret (it may hold a password); the Sentinels' password too. */}}
{{- define "loraq.redisEnv" -}}
- name: LORAQ_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "loraq.redisSecretName" . }}
      key: {{ include "loraq.redisUrlKey" . }}
{{- with include "loraq.sentinelPasswordRef" . }}
- name: LORAQ_SENTINEL__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . | splitList "/" | first }}
      key: {{ . | splitList "/" | last }}
{{- end }}
{{- end -}}

{{/* An optional secret env var: (dict "root" $ "name" "LORAQ_AUTH__KEYS" "key" "api-keys"). */}}
{{- define "loraq.optionalSecretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "loraq.appSecretName" .root }}
      key: {{ .key }}
      optional: true
{{- end -}}

{{/* Pod-level settings every loraq pod shares. enableServiceLinks is off because Kubernetes
would otherwise inject <SERVICE>_PORT-style variables for every Service in the namespace; a
Service named e.g. "loraq-redis" yields LORAQ_REDIS_PORT, and loraq refuses unknown LORAQ_*
variables at start. */}}
{{- define "loraq.podCommon" -}}
enableServiceLinks: false
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Writable scratch space under a read-only root filesystem, and the adapters volume. */}}
{{- define "loraq.volumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
- name: adapters
  {{- toYaml (.Values.adapters.volume | default (dict "emptyDir" dict)) | nindent 2 }}
{{- with .Values.modelStore.volume }}
- name: models
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "loraq.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/loraq
- name: adapters
  mountPath: {{ .Values.adapters.dir }}
  readOnly: true
{{- if .Values.modelStore.volume }}
- name: models
  mountPath: {{ .Values.modelStore.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* A scalar as an env value. Helm reads every number in values as float64, and a float64
prints as 1.6777216e+07; whole numbers are printed as integers instead. */}}
{{- define "loraq.num" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* The object stores' settings; both stores must be s3:// prefixes (see values.yaml). Redis
is checked first: it is the one value the chart documents as required before these. */}}
{{- define "loraq.storesEnv" -}}
{{- $_ := include "loraq.redisUrl" . -}}
{{- $stores := .Values.stores -}}
{{- range $name := list "files" "adapters" -}}
{{- if not (regexMatch "^s3://[^/]+" (get $stores $name)) -}}
{{- fail (printf "stores.%s must be an s3:// prefix (e.g. s3://my-bucket/loraq/%s): every gateway and worker must see the same files, and a pod's own disk is neither shared nor writable" $name $name) -}}
{{- end -}}
{{- end -}}
LORAQ_BULK__STORE: {{ $stores.files | quote }}
LORAQ_ADAPTERS__STORE: {{ $stores.adapters | quote }}
{{- with $stores.s3Endpoint }}
LORAQ_BULK__S3_ENDPOINT: {{ . | quote }}
LORAQ_ADAPTERS__S3_ENDPOINT: {{ . | quote }}
{{- end }}
{{- end -}}
