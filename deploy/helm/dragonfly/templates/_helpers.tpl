{{/* Names. */}}
{{- define "dragonfly.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dragonfly.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "dragonfly.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "dragonfly.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dragonfly.component" -}}
{{- printf "%s-%s" (include "dragonfly.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dragonfly.labels" -}}
app.kubernetes.io/name: {{ include "dragonfly.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "dragonfly.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dragonfly.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The image of a component: its own `image` values over the global ones. */}}
{{- define "dragonfly.image" -}}
{{- $image := mergeOverwrite (deepCopy .root.Values.image) (.values.image | default dict) -}}
{{- $tag := $image.tag | default .root.Chart.AppVersion -}}
{{- if $image.registry -}}
{{- printf "%s/%s:%s" $image.registry $image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "dragonfly.pullPolicy" -}}
{{- (mergeOverwrite (deepCopy .root.Values.image) (.values.image | default dict)).pullPolicy -}}
{{- end -}}

{{- define "dragonfly.caSecret" -}}
{{- .Values.security.caSecret | default (printf "%s-ca" (include "dragonfly.fullname" .)) -}}
{{- end -}}

{{/* The scheduler replicas' stable addresses, as daemons dial them. */}}
{{- define "dragonfly.schedulerAddrs" -}}
{{- $name := include "dragonfly.component" (dict "root" . "component" "scheduler") -}}
{{- $addrs := list -}}
{{- range $i := until (int .Values.scheduler.replicas) -}}
{{- $addrs = append $addrs (printf "%s-%d.%s.%s.svc.%s:%d" $name $i $name $.Release.Namespace $.Values.clusterDomain (int $.Values.scheduler.containerPort)) -}}
{{- end -}}
{{- toJson $addrs -}}
{{- end -}}

{{/* The `security` section of a component's config: files written by the cert init container. */}}
{{- define "dragonfly.securityConfig" -}}
{{- if .Values.security.enable -}}
{{- toJson (dict "enable" true "caCert" "/etc/dragonfly/tls/ca.crt" "cert" "/etc/dragonfly/tls/host.crt" "key" "/etc/dragonfly/tls/host.key") -}}
{{- else -}}
{{- toJson (dict "enable" false) -}}
{{- end -}}
{{- end -}}

{{/*
The init container that issues this pod's certificate for its own host name and IP (the daemon's defaults for
host.hostname and host.ip), and the volumes it needs. Arguments: root, role, dns (extra DNS names).
*/}}
{{- define "dragonfly.certsInitContainer" -}}
{{- if .root.Values.security.enable }}
- name: certs
  image: {{ include "dragonfly.image" (dict "root" .root "values" .values) }}
  imagePullPolicy: {{ include "dragonfly.pullPolicy" (dict "root" .root "values" .values) }}
  env:
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
  command:
    - sh
    - -ec
    - |
      name=$(python3 -c 'import socket; print(socket.gethostname())')
      dragonfly certs issue --ca-dir /etc/dragonfly/ca --hostname "$name" --ip "$POD_IP" --role {{ .role }}{{ range .dns }} --dns {{ . }}{{ end }} --days {{ .root.Values.security.certDays }} --out /etc/dragonfly/tls --file-name host
      cp /etc/dragonfly/ca/ca.crt /etc/dragonfly/tls/ca.crt
  volumeMounts:
    - name: ca
      mountPath: /etc/dragonfly/ca
      readOnly: true
    - name: tls
      mountPath: /etc/dragonfly/tls
{{- end }}
{{- end -}}

{{- define "dragonfly.certsVolumes" -}}
{{- if .Values.security.enable }}
- name: ca
  secret:
    secretName: {{ include "dragonfly.caSecret" . }}
- name: tls
  emptyDir:
    medium: Memory
{{- end }}
{{- end -}}

{{- define "dragonfly.certsVolumeMounts" -}}
{{- if .Values.security.enable }}
- name: tls
  mountPath: /etc/dragonfly/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "dragonfly.podSecurityContext" -}}
runAsUser: 65532
runAsGroup: 65532
runAsNonRoot: true
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "dragonfly.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
