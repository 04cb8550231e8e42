{#- logvm.template (in templates, `qubesctl --skip-dom0 --targets=TEMPLATES
    state.apply logvm.template`): the qubes-logvm package and the exporter's
    and collector's configuration. Qubes based on the template see both at
    their next start; the exporter runs only where dom0 set
    service.logvm-exporter, the collector only in the LogVM. -#}
{%- from tpldir ~ '/map.jinja' import logvm, logvm_paths with context %}
{%- set id = sls | replace('.', '-') %}
{#- The one setting the formula adds to the product's defaults: the witness
    (logvm:witness), which the collector leaves off until a target is set. #}
{%- set witness = {'target': logvm.witness,
                   'interval_seconds': logvm.collector.witness.interval_seconds} %}
{%- set collector = salt['slsutil.merge'](logvm.collector, {'witness': witness}) %}

{{ id }}-package:
  pkg.installed:
    - name: qubes-logvm
    - require_in:
      - file: {{ id }}-config-dir

{{ id }}-config-dir:
  file.directory:
    - name: {{ logvm_paths.config_dir }}
    - mode: '0755'
    - makedirs: true

{{ id }}-exporter:
  file.managed:
    - name: {{ logvm_paths.exporter }}
    - source: salt://{{ tpldir }}/files/config.yaml.jinja
    - template: jinja
    - mode: '0644'
    - context:
        title: logvm-exporter configuration (source qubes)
        section: exporter
        format: json
        data: {{ logvm.exporter | json }}
    - require:
      - file: {{ id }}-config-dir

{{ id }}-collector:
  file.managed:
    - name: {{ logvm_paths.collector }}
    - source: salt://{{ tpldir }}/files/config.yaml.jinja
    - template: jinja
    - mode: '0644'
    - context:
        title: logvm-collector configuration (the LogVM; limits are overridden in /rw/config/qubes-logvm/collector.yaml)
        section: collector
        data: {{ collector | json }}
    - require:
      - file: {{ id }}-config-dir
