{{/* Names ------------------------------------------------------------------------- */}}

{{- define "tuneforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every resource name: the release name, plus the chart name unless it
is already part of it (release "tuneforge" gives "tuneforge-gateway", not
"tuneforge-tuneforge-gateway"). */}}
{{- define "tuneforge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "tuneforge.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tuneforge.operator.fullname" -}}{{ include "tuneforge.fullname" . }}-operator{{- end -}}
{{- define "tuneforge.gateway.fullname" -}}{{ include "tuneforge.fullname" . }}-gateway{{- end -}}
{{- define "tuneforge.settings.fullname" -}}{{ include "tuneforge.fullname" . }}-settings{{- end -}}

{{/* Labels ------------------------------------------------------------------------ */}}

{{- define "tuneforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tuneforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tuneforge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tuneforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tuneforge
{{- end -}}

{{/* Images ------------------------------------------------------------------------ */}}

{{- define "tuneforge.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* Storage ----------------------------------------------------------------------- */}}

{{/* TUNEFORGE_STORE_ROOT: pvc://<claim>/<path>, so every Pod that mounts the claim under
storage.pvc.mountRoot resolves the same URIs; or s3://<bucket>/<prefix>. */}}
{{- define "tuneforge.storeRoot" -}}
{{- if eq .Values.storage.type "s3" -}}
{{- if not .Values.storage.s3.bucket -}}
{{- fail "storage.s3.bucket is required when storage.type is s3" -}}
{{- end -}}
{{- printf "s3://%s/%s" .Values.storage.s3.bucket (trimAll "/" .Values.storage.s3.prefix) | trimSuffix "/" -}}
{{- else -}}
{{- printf "pvc://%s/%s" .Values.storage.pvc.claimName (trimAll "/" .Values.storage.pvc.path) | trimSuffix "/" -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret with S3 credentials: fixed, because the operator hands the same
name to trainer, serving and batch Pods in their own namespaces. */}}
{{- define "tuneforge.storeCredentialsSecret" -}}tuneforge-store-credentials{{- end -}}

{{/* Volumes and mounts every tuneforge Pod of this chart needs: writable /tmp and cache
directories under a read-only root filesystem, and the store claim in PVC mode. */}}
{{- define "tuneforge.volumes" -}}
- name: tmp
  emptyDir: {}
- name: cache
  emptyDir: {}
{{- if eq .Values.storage.type "pvc" }}
- name: store
  persistentVolumeClaim:
    claimName: {{ .Values.storage.pvc.claimName }}
{{- end }}
{{- end -}}

{{- define "tuneforge.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /var/cache/tuneforge
{{- if eq .Values.storage.type "pvc" }}
- name: store
  mountPath: {{ printf "%s/%s" (trimSuffix "/" .Values.storage.pvc.mountRoot) .Values.storage.pvc.claimName }}
{{- end }}
{{- end -}}

{{/* Environment shared by operator and gateway: the settings ConfigMap, and the S3
credentials Secret (optional: without it, workload identity is used). */}}
{{- define "tuneforge.envFrom" -}}
- configMapRef:
    name: {{ include "tuneforge.settings.fullname" . }}
{{- if eq .Values.storage.type "s3" }}
- secretRef:
    name: {{ include "tuneforge.storeCredentialsSecret" . }}
    optional: true
{{- end }}
{{- end -}}

{{/* Soft anti-affinity spreading one component's replicas over nodes. */}}
{{- define "tuneforge.spread" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "tuneforge.selectorLabels" $root | nindent 12 }}
            app.kubernetes.io/component: {{ $component }}
{{- end -}}

{{/* Checks across values that the JSON schema cannot express. */}}
{{- define "tuneforge.validate" -}}
{{- if and (not .Values.operator.peering.enabled) (gt (int .Values.operator.replicas) 1) -}}
{{- fail (printf "operator.replicas is %d but operator.peering.enabled is false: replicas without peering would all act; set replicas to 1 or enable peering" (int .Values.operator.replicas)) -}}
{{- end -}}
{{- $profiles := list -}}
{{- range .Values.hardwareProfiles -}}
{{- if has .name $profiles -}}
{{- fail (printf "hardwareProfiles: the name %q is used twice" .name) -}}
{{- end -}}
{{- $profiles = append $profiles .name -}}
{{- end -}}
{{- if and .Values.defaultHardwareProfile (not (has .Values.defaultHardwareProfile $profiles)) -}}
{{- fail (printf "defaultHardwareProfile %q is not one of hardwareProfiles (%s)" .Values.defaultHardwareProfile (join ", " $profiles | default "none defined")) -}}
{{- end -}}
{{- range .Values.baseModels -}}
{{- if and .spec.defaultHardware (not (has .spec.defaultHardware $profiles)) -}}
{{- fail (printf "baseModels %q: spec.defaultHardware %q is not one of hardwareProfiles (%s)" .name .spec.defaultHardware (join ", " $profiles | default "none defined")) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.storage.type "s3") .Values.storage.s3.credentials.create (not (and .Values.storage.s3.credentials.accessKeyId .Values.storage.s3.credentials.secretAccessKey)) -}}
{{- fail "storage.s3.credentials.create needs storage.s3.credentials.accessKeyId and secretAccessKey" -}}
{{- end -}}
{{- end -}}
