{{/* Labels every object of this chart carries (deploy-and-e2e.md §1.2 "standard labels"). */}}
{{- define "base.labels" -}}
app.kubernetes.io/name: istio-base
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: istio
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/*
One CustomResourceDefinition. Argument: dict with
  root (the chart context), group, kind, scope (default Namespaced), approval (api-approved.kubernetes.io), plural, singular, shortNames (list), categories (list),
  versions (list of served version names), storage (the stored version), schema (name of a template that
  renders the openAPIV3Schema of .spec), status (bool: status subresource), columns (list of printer columns).
Every served version shares one schema: the versions differ only in name, as upstream's do.
*/}}
{{- define "base.crd" -}}
{{- $name := printf "%s.%s" .plural .group -}}
{{- if not (has $name .root.Values.base.excludedCRDs) }}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {{ $name }}
  labels:
    {{- include "base.labels" .root | nindent 4 }}
  {{- if or .root.Values.base.keepCRDs .approval }}
  annotations:
    {{- if .root.Values.base.keepCRDs }}
    helm.sh/resource-policy: keep
    {{- end }}
    {{- with .approval }}
    # *.k8s.io groups are protected: the API server requires the API review that approved the group
    api-approved.kubernetes.io: {{ . }}
    {{- end }}
  {{- end }}
spec:
  group: {{ .group }}
  scope: {{ .scope | default "Namespaced" }}
  names:
    kind: {{ .kind }}
    listKind: {{ .kind }}List
    plural: {{ .plural }}
    singular: {{ .singular }}
    {{- with .shortNames }}
    shortNames: {{ toJson . }}
    {{- end }}
    {{- with .categories }}
    categories: {{ toJson . }}
    {{- end }}
  versions:
  {{- $ctx := . }}
  {{- range .versions }}
  - name: {{ . }}
    served: true
    storage: {{ eq . $ctx.storage }}
    {{- if $ctx.status }}
    subresources:
      status: {}
    {{- end }}
    {{- with $ctx.columns }}
    additionalPrinterColumns: {{ toJson . }}
    {{- end }}
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            {{- include $ctx.schema $ctx.root | nindent 12 }}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
  {{- end }}
{{- end }}
{{- end }}

{{/* Reusable schema pieces. */}}
{{- define "base.schema.stringList" -}}
type: array
items: {type: string}
{{- end }}

{{- define "base.schema.stringMap" -}}
type: object
additionalProperties: {type: string}
{{- end }}

{{- define "base.schema.selector" -}}
type: object
description: Workloads (pods, WorkloadEntries) this applies to, by label; absent means the whole namespace.
properties:
  matchLabels:
    {{- include "base.schema.stringMap" . | nindent 4 }}
{{- end }}

{{- define "base.schema.targetRefs" -}}
type: array
description: Gateways, Services, ServiceEntries or the GatewayClass this applies to (enforced by waypoints).
items:
  type: object
  required: [kind, name]
  properties:
    group: {type: string}
    kind: {type: string}
    name: {type: string}
    namespace: {type: string}
{{- end }}

{{- define "base.schema.targetRef" -}}
type: object
required: [kind, name]
properties:
  group: {type: string}
  kind: {type: string}
  name: {type: string}
  namespace: {type: string}
{{- end }}
