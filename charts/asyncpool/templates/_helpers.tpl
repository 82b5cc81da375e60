{{/*
The chart name, overridable with nameOverride. Kept to 63 characters: label values are limited to it.
*/}}
{{- define "asyncpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release name when it already
contains the chart name (so "asyncpool" does not become "asyncpool-asyncpool"), else
"<release>-<chart>". Truncated to 63 characters because some fields (Service names) are DNS labels.
*/}}
{{- define "asyncpool.fullname" -}}
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

{{/*
The name of cluster-scoped objects (ClusterRoles, ClusterRoleBindings). The release namespace is part
of it so that the same release name installed in two namespaces does not collide; the ":" cannot occur
in a release or namespace name, so no two releases map to the same name. RBAC names are not DNS
labels, so no truncation.
*/}}
{{- define "asyncpool.clusterName" -}}
{{- printf "%s:%s" (include "asyncpool.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
"name-version" for the helm.sh/chart label ("+" is not allowed in label values).
*/}}
{{- define "asyncpool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator pods. They must never change after the first install: a
Deployment's selector is immutable.
*/}}
{{- define "asyncpool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "asyncpool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels on every object the chart renders.
*/}}
{{- define "asyncpool.labels" -}}
helm.sh/chart: {{ include "asyncpool.chart" . }}
{{ include "asyncpool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: asyncpool
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "asyncpool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "asyncpool.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The namespace of the leader Lease, where the chart grants Lease access.
*/}}
{{- define "asyncpool.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/*
The leader Lease name.
*/}}
{{- define "asyncpool.leaseName" -}}
{{- default (include "asyncpool.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: a digest pins it; the tag defaults to appVersion.
*/}}
{{- define "asyncpool.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
What the operator does with the API, in the pools' namespaces: the single source of the operator's
rules, used by the ClusterRole (all namespaces) and by the Role (watchNamespace). Keep it in step with
src/controller.rs and src/reconcile.rs; every verb below is used there, and nothing else is.
*/}}
{{- define "asyncpool.operatorRules" -}}
# The pools: watched by the controller (list/watch). Their status is written by server-side apply,
# which is a PATCH of the status subresource. The operator never writes a pool's spec.
- apiGroups: ["asyncpool.dev"]
  resources: ["asyncworkerpools"]
  verbs: ["list", "watch"]
- apiGroups: ["asyncpool.dev"]
  resources: ["asyncworkerpools/status"]
  verbs: ["patch"]
# Each pool's Deployment and Service: read directly before a reconcile (get), cached (list/watch)
# and written by server-side apply (patch). An apply that creates the object is authorized as a
# create as well, so create is needed for the first reconcile of a pool. Owner references make the
# garbage collector delete them with their pool, so no delete.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Worker pods: cached (list/watch; never fetched one by one) and annotated with
# controller.kubernetes.io/pod-deletion-cost (patch) so that scale-down removes drained workers.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch"]
# Scale events on the pools (kube-rs Recorder: create, then patch to count a repeated event).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.rbac.redisPasswordSecrets }}
# Redis passwords of pools that keep them in a Secret (queue.redis.passwordSecretRef), read to
# poll a pool's queue while it has no ready worker. Never listed or watched.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- end }}
