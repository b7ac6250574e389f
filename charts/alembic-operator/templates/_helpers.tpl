{{/* Names, labels and the bits of configuration more than one template needs. */}}

{{- define "alembic-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "alembic-operator.fullname" -}}
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

{{/* Cluster-scoped objects carry the namespace too: two releases of the same name in two namespaces never clash. */}}
{{- define "alembic-operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "alembic-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "alembic-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "alembic-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alembic-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "alembic-operator.labels" -}}
helm.sh/chart: {{ include "alembic-operator.chart" . }}
{{ include "alembic-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: alembic-operator
{{- end -}}

{{- define "alembic-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "alembic-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator's image reference; the Jobs get the same one (ALEMBIC_OPERATOR_IMAGE). */}}
{{- define "alembic-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* A ClusterKopfPeering is cluster-scoped (named with the namespace too); a KopfPeering lives in each namespace. */}}
{{- define "alembic-operator.peeringName" -}}
{{- if .Values.peering.name -}}
{{- .Values.peering.name -}}
{{- else if .Values.watchNamespaces -}}
{{- include "alembic-operator.fullname" . -}}
{{- else -}}
{{- include "alembic-operator.clusterName" . -}}
{{- end -}}
{{- end -}}

{{- define "alembic-operator.webhookServiceName" -}}
{{- printf "%s-webhook" (include "alembic-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "alembic-operator.webhookSecretName" -}}
{{- if eq .Values.webhook.certificate.source "secret" -}}
{{- required "webhook.certificate.secretName is required with webhook.certificate.source=secret" .Values.webhook.certificate.secretName -}}
{{- else -}}
{{- printf "%s-webhook-tls" (include "alembic-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Namespaces the webhook never matches: the release's own, and those asked for. */}}
{{- define "alembic-operator.webhookExcluded" -}}
{{- $out := list .Release.Namespace -}}
{{- range .Values.webhook.excludeNamespaces -}}
{{- $out = append $out . -}}
{{- end -}}
{{- $out | uniq | sortAlpha | join "," -}}
{{- end -}}

{{/* Rules for the namespaced resources the operator uses (the same in a ClusterRole and in each Role). */}}
{{- define "alembic-operator.namespacedRules" -}}
# Kopf watches DatabaseMigrations and patches their finalizer and progress annotations; the operator reads them.
- apiGroups: ["migrations.alembic-operator.io"]
  resources: ["databasemigrations"]
  verbs: ["get", "list", "watch", "patch"]
# The reconciler merge-patches its status fields; the pod gate patches status.heldPods.
- apiGroups: ["migrations.alembic-operator.io"]
  resources: ["databasemigrations/status"]
  verbs: ["patch"]
# The Jobs' ownerReferences set blockOwnerDeletion: clusters with OwnerReferencesPermissionEnforcement want this.
- apiGroups: ["migrations.alembic-operator.io"]
  resources: ["databasemigrations/finalizers"]
  verbs: ["update"]
# DatabaseMigrationSets: watched, read fresh for a pod that waits for a whole set; their status written; the
# DatabaseMigrations they own created, given the template, deleted when their target goes (never their database);
# ownerReferences with blockOwnerDeletion.
- apiGroups: ["migrations.alembic-operator.io"]
  resources: ["databasemigrationsets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["migrations.alembic-operator.io"]
  resources: ["databasemigrationsets/status"]
  verbs: ["patch"]
- apiGroups: ["migrations.alembic-operator.io"]
  resources: ["databasemigrationsets/finalizers"]
  verbs: ["update"]
- apiGroups: ["migrations.alembic-operator.io"]
  resources: ["databasemigrations"]
  verbs: ["create", "delete"]
# The database URL (spec.database.urlSecretRef): the operator reads it to observe the database's revision. A set's
# label selector lists Secrets, metadata only (their names and labels).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list"]
# The steps of a run are Jobs: created, watched, deleted (retention).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
# Job results (termination messages); labelled pods: watched, and patched to remove the scheduling gate.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch"]
# Expand/contract: which pods are the older version's (their ReplicaSets, Deployments, StatefulSets), read while
# a contract part waits.
- apiGroups: ["apps"]
  resources: ["replicasets", "deployments", "statefulsets"]
  verbs: ["list"]
# The plan Job's SQL, read once per plan from its scan container's log (kept in a ConfigMap for reviewers).
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Events on DatabaseMigrations and held pods.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# The audit trail: one record (ConfigMap) per finished run, pruned to audit.runRecords, and the plans' SQL
# (pruned with their Jobs); never read back.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "create", "delete"]
{{- end -}}

{{/* The admission webhook's settings, as the operator reads them (ALEMBIC_OPERATOR_WEBHOOK_*). */}}
{{- define "alembic-operator.webhookEnv" -}}
- name: ALEMBIC_OPERATOR_WEBHOOK_ENABLED
  value: {{ .Values.webhook.enabled | quote }}
{{- if .Values.webhook.enabled }}
- name: ALEMBIC_OPERATOR_WEBHOOK_LISTEN
  value: "0.0.0.0"
- name: ALEMBIC_OPERATOR_WEBHOOK_PORT
  value: {{ .Values.ports.webhook | quote }}
- name: ALEMBIC_OPERATOR_WEBHOOK_CERT_DIR
  value: /etc/alembic-operator/webhook
# The chart owns the MutatingWebhookConfiguration (templates/webhook.yaml): the operator only serves the webhook.
- name: ALEMBIC_OPERATOR_WEBHOOK_CONFIG_NAME
  value: "none"
- name: ALEMBIC_OPERATOR_WEBHOOK_EXCLUDE_NAMESPACES
  value: {{ include "alembic-operator.webhookExcluded" . | quote }}
- name: ALEMBIC_OPERATOR_WEBHOOK_REQUIRE_DIFFERENT_APPROVER
  value: {{ .Values.approval.requireDifferentUser | quote }}
{{- if .Values.watchNamespaces }}
- name: ALEMBIC_OPERATOR_WEBHOOK_NAMESPACES
  value: {{ join "," .Values.watchNamespaces | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* What the webhook's serving certificate must cover: "dns,dns,...|ip,ip,..." (the Service's names, the host of
webhook.url, and the extra names asked for). */}}
{{- define "alembic-operator.webhookSANs" -}}
{{- $svc := include "alembic-operator.webhookServiceName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $dns := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- $ips := list -}}
{{- range .Values.webhook.certificate.extraDNSNames -}}
{{- $dns = append $dns . -}}
{{- end -}}
{{- range .Values.webhook.certificate.extraIPAddresses -}}
{{- $ips = append $ips . -}}
{{- end -}}
{{- with .Values.webhook.url -}}
{{- $host := regexReplaceAll ":[0-9]+$" (urlParse .).host "" | trimPrefix "[" | trimSuffix "]" -}}
{{- if regexMatch "^[0-9.]+$|:" $host -}}
{{- $ips = append $ips $host -}}
{{- else if $host -}}
{{- $dns = append $dns $host -}}
{{- end -}}
{{- end -}}
{{- printf "%s|%s" ($dns | uniq | join ",") ($ips | uniq | join ",") -}}
{{- end -}}
