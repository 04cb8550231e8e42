{#- logvm.sources (dom0): service.logvm-exporter on for the selected source
    qubes (by name, tag, all, and disposable templates, which also get the
    DispVM tag so that their DispVMs inherit flag and tag); off for excluded
    ones. The flag takes effect when a qube next starts. -#}
{%- from tpldir ~ '/map.jinja' import logvm with context %}
{%- from tpldir ~ '/sources.jinja' import selected, excluded with context %}
{%- set id = sls | replace('.', '-') %}
{%- set dvm_tag = logvm.sources.dispvm_tag %}

{%- for name in selected %}

{{ id }}-enable-{{ name }}:
  qvm.vm:
    - name: {{ name }}
    - service:
      - enable:
        - logvm-exporter
{%-   if name in logvm.sources.disposable_templates %}
    - tags:
      - add:
        - {{ dvm_tag | yaml_dquote }}
{%-   endif %}
{%- endfor %}
{%- for name in excluded %}

{{ id }}-exclude-{{ name }}:
  qvm.vm:
    - name: {{ name }}
    - service:
      - default:
        - logvm-exporter
    - tags:
      - del:
        - {{ dvm_tag | yaml_dquote }}
{%- endfor %}
