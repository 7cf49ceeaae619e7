{{- define "cni.profile" -}}
{{- $p := .Values.profile | default .Values.global.profile | default "" -}}
{{- if not (has $p (list "" "default" "ambient")) -}}
{{- fail (printf "unknown profile %q: this chart knows \"ambient\" and \"default\"" $p) -}}
{{- end -}}
{{ $p }}
{{- end }}

{{/* "true" when the ambient node agent is on: ambient.enabled if set, else the profile decides. */}}
{{- define "cni.ambient" -}}
{{- if kindIs "bool" .Values.ambient.enabled -}}
{{ .Values.ambient.enabled }}
{{- else -}}
{{ eq (include "cni.profile" .) "ambient" }}
{{- end -}}
{{- end }}

{{- define "cni.image" -}}
{{- $hub := .Values.hub | default .Values.global.hub -}}
{{- $tag := .Values.tag | default .Values.global.tag | toString -}}
{{- $variant := .Values.variant | default .Values.global.variant -}}
{{- if contains "/" .Values.image -}}
{{ .Values.image }}
{{- else -}}
{{ $hub }}/{{ .Values.image }}:{{ $tag }}{{ if $variant }}-{{ $variant }}{{ end }}
{{- end -}}
{{- end }}

{{- define "cni.labels" -}}
app.kubernetes.io/name: istio-cni
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: istio
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}
