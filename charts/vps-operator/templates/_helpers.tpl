{{/* Labels every object carries. */}}
{{- define "vps.labels" -}}
app.kubernetes.io/name: vps-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: include "vps.selector" (list . "gateway") */}}
{{- define "vps.selector" -}}
app.kubernetes.io/name: vps-operator
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "vps.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The pod-level security context: non-root, RuntimeDefault seccomp. */}}
{{- define "vps.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container-level security context: read-only root, no escalation, no capabilities. */}}
{{- define "vps.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Scheduling and pull secrets shared by every Deployment. */}}
{{- define "vps.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A pod template's annotations: the global podAnnotations and a component's own, which win
on the same key: include "vps.podAnnotations" (list . .Values.gateway.podAnnotations). Nothing
when there are none. */}}
{{- define "vps.podAnnotations" -}}
{{- $annotations := merge (dict) ((index . 1) | default dict) ((index . 0).Values.podAnnotations | default dict) -}}
{{- with $annotations -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The name of the onboarding Job's Secret, which holds the first account's token. */}}
{{- define "vps.initialTokenSecret" -}}
{{ .Release.Name }}-initial-token
{{- end -}}
