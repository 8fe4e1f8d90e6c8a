{{/* Chart name, overridable with nameOverride. */}}
{{- define "polypythia.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every resource: <release>-<name>, or the release name when it contains the name. */}}
{{- define "polypythia.fullname" -}}
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

{{/* chart label value: <name>-<version>. */}}
{{- define "polypythia.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "polypythia.selectorLabels" -}}
app.kubernetes.io/name: {{ include "polypythia.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Standard labels of every resource. */}}
{{- define "polypythia.labels" -}}
helm.sh/chart: {{ include "polypythia.chart" . }}
{{ include "polypythia.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: polypythia
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Name of the operator's ServiceAccount. */}}
{{- define "polypythia.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "polypythia.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference from {repository, tag, digest}; call with (dict "image" $img "context" $). */}}
{{- define "polypythia.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .context.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* A file under files/ that another part of the project owns; fail readably if it is missing. */}}
{{- define "polypythia.requiredFile" -}}
{{- $content := .context.Files.Get .path }}
{{- if not $content }}
{{- fail (printf "chart file %s is missing or empty; it is required by %s" .path .by) }}
{{- end }}
{{- $content }}
{{- end }}
