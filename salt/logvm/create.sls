{#- logvm.create (dom0): the LogVM itself, with no network, started at boot,
    marked by a tag and with the collector's service flag. -#}
{%- from tpldir ~ '/map.jinja' import logvm, disk_bytes with context %}
{%- set id = sls | replace('.', '-') %}
{%- set vm = logvm.vm %}

{{ id }}-qube:
  qvm.vm:
    - name: {{ vm.name }}
    - present:
      - class: AppVM
      - template: {{ vm.template }}
      - label: {{ vm.label }}
      - mem: {{ vm.memory }}
      - vcpus: {{ vm.vcpus }}
    - prefs:
      - label: {{ vm.label }}
      - netvm: none
      - autostart: {{ vm.autostart }}
      - memory: {{ vm.memory }}
      - maxmem: {{ vm.maxmem }}
      - vcpus: {{ vm.vcpus }}
      - include-in-backups: true
{%- if vm.default_dispvm %}
      - default-dispvm: {{ vm.default_dispvm }}
{%- endif %}
    - service:
      - enable:
        - logvm-collector
    - tags:
      - add:
        - {{ vm.tag | yaml_dquote }}

{#- The private volume holds the store; qvm.vm has no volume action, so
    qvm-volume grows it (it never shrinks: shrinking would lose logs). #}
{{ id }}-private-size:
  cmd.run:
    - name: qvm-volume resize {{ vm.name }}:private {{ disk_bytes }}
    - unless: test "$(qvm-volume info {{ vm.name }}:private size)" -ge {{ disk_bytes }}
    - require:
      - qvm: {{ id }}-qube
