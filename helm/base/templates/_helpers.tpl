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
  root (the chart context), respectExisting (bool: leave the CRD alone when another owner has it, see
  "base.crd.ownedElsewhere"), group, kind, scope (default Namespaced), approval (api-approved.kubernetes.io), plural, singular, shortNames (list), categories (list),
  versions (list of served version names), storage (the stored version), schema (name of a template that
  renders the openAPIV3Schema of .spec), status (bool: status subresource), columns (list of printer columns).
Every served version shares one schema: the versions differ only in name, as upstream's do.
*/}}
{{- define "base.crd" -}}
{{- $name := printf "%s.%s" .plural .group -}}
{{- $foreign := and .respectExisting (include "base.crd.ownedElsewhere" (dict "root" .root "name" $name)) -}}
{{- if not (or (has $name .root.Values.base.excludedCRDs) $foreign) }}
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

{{/*
"true" when the CRD named .name is already in the cluster and is not this release's: no Helm owner (applied
by hand, by the cloud provider, by upstream's standard-install.yaml) or another release's. Installing over it
would fail ("invalid ownership metadata") or, if forced, replace its owner's schemas with ours, so the chart
leaves it alone and NOTES.txt names it. A CRD this release installed earlier is still ours: upgrades keep
rendering it. `lookup` sees the cluster only in `helm install`/`upgrade` (and --dry-run=server); under
`helm template`, `helm lint` and client-side dry-runs it returns nothing, so offline renders (Argo CD's
included) always contain every CRD. Argument: dict with root (the chart context) and name.
*/}}
{{- define "base.crd.ownedElsewhere" -}}
{{- $live := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" .name -}}
{{- if $live -}}
{{- $annotations := $live.metadata.annotations | default dict -}}
{{- $owner := list (get $annotations "meta.helm.sh/release-name") (get $annotations "meta.helm.sh/release-namespace") -}}
{{- if ne (toJson $owner) (toJson (list .root.Release.Name .root.Release.Namespace)) -}}true{{- end -}}
{{- end -}}
{{- end }}

{{/*
The Gateway API CRDs of crds-gateway-api.yaml that this install leaves to their existing owner, comma
separated (empty when none, when gatewayAPI is off, and in every offline render). Context: the base chart's
(`.Subcharts.base` from the ambient umbrella).
*/}}
{{- define "base.gatewayAPI.skipped" -}}
{{- $skipped := list -}}
{{- if .Values.gatewayAPI.enabled -}}
{{- range include "base.gatewayAPI.crds" . | fromJsonArray -}}
{{- $name := printf "%s.%s" .plural .group -}}
{{- if and (not (has $name $.Values.base.excludedCRDs)) (include "base.crd.ownedElsewhere" (dict "root" $ "name" $name)) -}}
{{- $skipped = append $skipped $name -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join ", " $skipped -}}
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

{{/*
NOTES.txt paragraph naming the Gateway API CRDs left to their existing owner; empty when none. Context: the
base chart's (`.Subcharts.base` from the ambient umbrella, whose NOTES.txt is the one helm prints).
*/}}
{{- define "base.notes.gatewayAPI" -}}
{{- with include "base.gatewayAPI.skipped" . -}}
Gateway API CRDs left to their existing owner (already in the cluster and not this release's, so not
installed or changed): {{ . }}
Waypoints and HTTPRoutes need them to serve gateway.networking.k8s.io/v1 (Gateway API v1.2 or newer).
{{- end -}}
{{- end }}
