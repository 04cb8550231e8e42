{#- logvm.sources (dom0): service.logvm-exporter on for the selected source
    qubes (by name, tag, all, and disposable templates so that their DispVMs
    inherit it); off for excluded ones. The flag takes effect when a qube
    next starts. -#}
{%- from tpldir ~ '/map.jinja' import logvm with context %}
{%- from tpldir ~ '/sources.jinja' import selected, excluded with context %}
{%- set id = sls | replace('.', '-') %}

{%- for name in selected %}

{{ id }}-enable-{{ name }}:
  qvm.service:
    - name: {{ name }}
    - enable:
      - logvm-exporter
{%- endfor %}
{%- for name in excluded %}

{{ id }}-exclude-{{ name }}:
  qvm.service:
    - name: {{ name }}
    - default:
      - logvm-exporter
{%- endfor %}
