{{- define "ztunnel.name" -}}
{{ .Values.resourceName | default "ztunnel" }}
{{- end }}

{{- define "ztunnel.istiod" -}}
istiod{{ if .Values.revision }}-{{ .Values.revision }}{{ end }}.{{ .Values.istioNamespace | default .Values.global.istioNamespace }}.svc:15012
{{- end }}

{{- define "ztunnel.image" -}}
{{- $hub := .Values.hub | default .Values.global.hub -}}
{{- $tag := .Values.tag | default .Values.global.tag | toString -}}
{{- $variant := .Values.variant | default .Values.global.variant -}}
{{- if contains "/" .Values.image -}}
{{ .Values.image }}
{{- else -}}
{{ $hub }}/{{ .Values.image }}:{{ $tag }}{{ if $variant }}-{{ $variant }}{{ end }}
{{- end -}}
{{- end }}

{{- define "ztunnel.labels" -}}
app.kubernetes.io/name: ztunnel
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: istio
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}
