{#- logvm.policy (dom0): the qrexec policy rendered from pillar (LogVM name,
    witness, which qubes may send), in its own file 50-logvm.policy. The
    package's default 70-logvm.policy (a %config file of qubes-logvm-dom0) is
    left as the package installed it: this file comes first and decides every
    logvm.Send and logvm.Witness call, so the package's lines are never
    reached. logvm.clean removes this file, and the package's default applies
    again. -#}
{%- from tpldir ~ '/map.jinja' import logvm, logvm_paths with context %}
{%- set id = sls | replace('.', '-') %}

{{ id }}-file:
  file.managed:
    - name: {{ logvm_paths.policy }}
    - source: salt://{{ tpldir }}/files/policy.jinja
    - template: jinja
    - context:
        logvm: {{ logvm | json }}
    - user: root
    - group: qubes
    - mode: '0664'
    - makedirs: false
