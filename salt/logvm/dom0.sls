{#- logvm.dom0 (dom0): dom0 as a source (pillar logvm:dom0, docs/dom0.md).
    With dom0:enabled, /etc/qubes-logvm/exporter-dom0.yaml (the dom0
    exporter's only configuration file; its unit is gated on it) and
    logvm-exporter-dom0.service enabled and restarted when the file changed.
    Without, the file and the enablement go and a running exporter stops;
    its positions in /var/lib/qubes-logvm-exporter stay, so turning it on
    again sends only what is new. The excluded sources (logvm:sources:
    exclude, names and tags resolved now) are excluded here too: none of
    their files leave dom0. -#}
{%- from tpldir ~ '/map.jinja' import logvm, logvm_paths with context %}
{%- set id = sls | replace('.', '-') %}
{%- set dom0 = logvm.dom0 %}
{%- set unit = 'logvm-exporter-dom0.service' %}
{%- set wants = '/etc/systemd/system/multi-user.target.wants/' ~ unit %}
{%- if dom0.enabled %}
{%-   from tpldir ~ '/sources.jinja' import excluded, routes with context %}
{%-   set journal = salt['slsutil.merge']({'enabled': dom0.journal}, dom0.filters) %}
{%-   set settings = {
        'batch': logvm.exporter.batch,
        'backoff': logvm.exporter.backoff,
        'ack_timeout': logvm.exporter.ack_timeout,
        'shutdown_drain': logvm.exporter.shutdown_drain,
        'sources': {'journal': journal},
        'dom0': {
          'enabled': True,
          'logvm': logvm.vm.name,
          'consoles': dom0.consoles,
          'qubes_logs': dom0.qubes_logs,
          'remove_dispvm_consoles': dom0.remove_dispvm_consoles,
          'exclude': excluded,
          'routes': routes,
        },
      } %}

{{ id }}-package:
  pkg.installed:
    - name: qubes-logvm-dom0

{{ id }}-config:
  file.managed:
    - name: {{ logvm_paths.dom0_exporter }}
    - source: salt://{{ tpldir }}/files/config.yaml.jinja
    - template: jinja
    - mode: '0644'
    - makedirs: true
    - context:
        title: logvm-exporter in dom0 (logvm-exporter-dom0.service)
        section: dom0
        format: json
        data: {{ settings | json }}
    - require:
      - pkg: {{ id }}-package

{{ id }}-enable:
  file.symlink:
    - name: {{ wants }}
    - target: /usr/lib/systemd/system/{{ unit }}
    - makedirs: true
    - require:
      - pkg: {{ id }}-package

{{ id }}-restart:
  cmd.run:
    - name: {{ logvm.system.dom0_exporter_restart_command | yaml_dquote }}
    - onchanges:
      - file: {{ id }}-config
      - file: {{ id }}-enable
{%- else %}

{{ id }}-enable:
  file.absent:
    - name: {{ wants }}

{{ id }}-config:
  file.absent:
    - name: {{ logvm_paths.dom0_exporter }}

{{ id }}-stop:
  cmd.run:
    - name: {{ logvm.system.dom0_exporter_stop_command | yaml_dquote }}
    - onchanges:
      - file: {{ id }}-enable
      - file: {{ id }}-config
{%- endif %}
