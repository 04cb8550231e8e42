{#- logvm.witness (dom0): the witness end of checkpoints. In dom0 the
    logvm.Witness service comes with the dom0 package; another witness qube
    must exist (its template gets the VM package through logvm.template). -#}
{%- from tpldir ~ '/map.jinja' import logvm with context %}
{%- set id = sls | replace('.', '-') %}
{%- if logvm.witness == 'dom0' %}
{%-   if logvm.system.install_packages %}

{{ id }}-dom0-package:
  pkg.installed:
    - name: qubes-logvm-dom0
{%-   else %}

{{ id }}-dom0:
  test.succeed_without_changes:
    - name: witness is dom0 (package installation is off)
{%-   endif %}
{%- else %}

{{ id }}-qube:
  qvm.exists:
    - name: {{ logvm.witness }}
{%- endif %}
