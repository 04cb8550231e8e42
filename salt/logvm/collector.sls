{#- logvm.collector (in the LogVM, `qubesctl --skip-dom0 --targets=sys-log
    state.apply logvm.collector`): the per-qube limits (connections, rate
    limits, quotas, global cap, retention) in /rw/config/qubes-logvm/, which
    persists across reboots and is merged over /etc/qubes-logvm/collector.yaml
    (segment size is here too: quotas are checked against it).
    A change reloads the running collector (SIGHUP), so a pillar edit takes
    effect without a restart. -#}
{%- from tpldir ~ '/map.jinja' import logvm, logvm_paths with context %}
{%- set id = sls | replace('.', '-') %}
{%- set keys = ['max_connections', 'max_connections_per_qube', 'rate_limit', 'segment', 'classes',
                'quota', 'global', 'retention'] %}
{%- set limits = {} %}
{%- for key in keys %}{% do limits.update({key: logvm.collector[key]}) %}{% endfor %}

{{ id }}-override-dir:
  file.directory:
    - name: {{ logvm_paths.override_dir }}
    - mode: '0755'
    - makedirs: true

{{ id }}-limits:
  file.managed:
    - name: {{ logvm_paths.override }}
    - source: salt://{{ tpldir }}/files/config.yaml.jinja
    - template: jinja
    - mode: '0644'
    - context:
        title: logvm-collector limits for this LogVM (merged over /etc/qubes-logvm/collector.yaml)
        section: collector
        data: {{ limits | json }}
    - require:
      - file: {{ id }}-override-dir

{{ id }}-reload:
  cmd.run:
    - name: {{ logvm.system.reload_command | yaml_dquote }}
    - onchanges:
      - file: {{ id }}-limits
