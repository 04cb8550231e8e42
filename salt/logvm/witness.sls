{#- logvm.witness (dom0): the witness end of checkpoints. In dom0 the
    logvm.Witness service comes with qubes-logvm-dom0 and keeps its
    checkpoints in /var/lib/qubes-logvm-witness (root:qubes 0770, as the
    package makes it). Another witness qube must exist; its template gets the
    VM package (which carries the service) through logvm.template. -#}
{%- from tpldir ~ '/map.jinja' import logvm with context %}
{%- set id = sls | replace('.', '-') %}
{%- set root = logvm.system.root.rstrip('/') %}
{%- if logvm.witness == 'dom0' %}
{%-   if logvm.system.install_packages %}

{{ id }}-dom0-package:
  pkg.installed:
    - name: qubes-logvm-dom0
    - require_in:
      - file: {{ id }}-dom0-state
{%-   endif %}

{{ id }}-dom0-state:
  file.directory:
    - name: {{ root }}/var/lib/qubes-logvm-witness
    - user: root
{#- A scratch root (tests) has no qubes group. #}
    - group: {{ 'qubes' if not root else 'root' }}
    - mode: '0770'
    - makedirs: {{ root != '' }}
{%- else %}

{{ id }}-qube:
  qvm.exists:
    - name: {{ logvm.witness }}
{%- endif %}
