{#- logvm.policy (dom0): the qrexec policy rendered from pillar (LogVM name,
    witness, which qubes may send). -#}
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
{#- dom0's policy files are root:qubes; a scratch root (tests) has no such group. #}
    - group: {{ 'qubes' if not logvm.system.root else 'root' }}
    - mode: '0664'
    - makedirs: {{ logvm.system.root != '' }}
