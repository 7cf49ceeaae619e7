{{/* "-<revision>" for a revisioned install, "" for the default one. */}}
{{- define "istiod.suffix" -}}
{{- if .Values.revision }}-{{ .Values.revision }}{{ end -}}
{{- end }}

{{- define "istiod.name" -}}
istiod{{ include "istiod.suffix" . }}
{{- end }}

{{/* The istio.io/rev label value: the revision, or "default". */}}
{{- define "istiod.rev" -}}
{{ .Values.revision | default "default" }}
{{- end }}

{{- define "istiod.profile" -}}
{{- $p := .Values.profile | default .Values.global.profile | default "" -}}
{{- if not (has $p (list "" "default" "ambient")) -}}
{{- fail (printf "unknown profile %q: this chart knows \"ambient\" and \"default\"" $p) -}}
{{- end -}}
{{ $p }}
{{- end }}

{{- define "istiod.image" -}}
{{- $hub := .Values.hub | default .Values.global.hub -}}
{{- $tag := .Values.tag | default .Values.global.tag | toString -}}
{{- $variant := .Values.variant | default .Values.global.variant -}}
{{- if contains "/" .Values.image -}}
{{ .Values.image }}
{{- else -}}
{{ $hub }}/{{ .Values.image }}:{{ $tag }}{{ if $variant }}-{{ $variant }}{{ end }}
{{- end -}}
{{- end }}

{{- define "istiod.waypointImage" -}}
{{- $hub := .Values.hub | default .Values.global.hub -}}
{{- $tag := .Values.tag | default .Values.global.tag | toString -}}
{{- $variant := .Values.variant | default .Values.global.variant -}}
{{- if contains "/" .Values.global.proxy.image -}}
{{ .Values.global.proxy.image }}
{{- else -}}
{{ $hub }}/{{ .Values.global.proxy.image }}:{{ $tag }}{{ if $variant }}-{{ $variant }}{{ end }}
{{- end -}}
{{- end }}

{{- define "istiod.labels" -}}
app.kubernetes.io/name: istiod
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: istio
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
istio.io/rev: {{ include "istiod.rev" . }}
{{- end }}

{{- define "istiod.selectorLabels" -}}
app: istiod
istio.io/rev: {{ include "istiod.rev" . }}
{{- end }}

{{- define "istiod.trustedNodeAccounts" -}}
{{ .Values.trustedZtunnelNamespace | default .Release.Namespace }}/{{ .Values.trustedZtunnelName | default "ztunnel" }}
{{- end }}
