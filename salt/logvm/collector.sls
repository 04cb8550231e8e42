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
{#- A further LogVM (logvm:logvms) has its own default quota. #}
{%- set more = logvm.logvms.get(grains['id'], {}) %}
{%- if 'quota' in more %}
{%-   do limits.update({'quota': salt['slsutil.merge'](limits.quota, {'default': more.quota})}) %}
{%- endif %}

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
{%- set fwd = logvm.forward %}
{%- if fwd.enabled %}

{#- logvm-forward's settings (pillar logvm:forward; the forwarder qube and the
    server's address are dom0's and the forwarder's business, not the
    LogVM's): /rw/config/qubes-logvm/forward.yaml, merged over the shipped
    /etc/qubes-logvm/forward.yaml. The call goes to @default: dom0's policy
    names the forwarder. A change restarts a running forwarder (its windows
    resume from the committed cursors). #}
{%- set settings = {'server': {'name': fwd.server.name},
                    'connect': {'qube': '@default', 'service': 'logvm.Forward'}} %}
{%- for key in ('tls', 'hostname', 'qubes', 'window', 'facility', 'pen', 'connect_timeout',
                'poll', 'retry_max', 'state_dir') %}
{%-   do settings.update({key: fwd[key]}) %}
{%- endfor %}

{{ id }}-forward:
  file.managed:
    - name: {{ logvm_paths.override_dir }}/forward.yaml
    - source: salt://{{ tpldir }}/files/config.yaml.jinja
    - template: jinja
    - mode: '0644'
    - context:
        title: logvm-forward settings for this LogVM (merged over /etc/qubes-logvm/forward.yaml)
        section: forward
        data: {{ settings | json }}
    - require:
      - file: {{ id }}-override-dir

{{ id }}-forward-restart:
  cmd.run:
    - name: {{ logvm.system.forward_restart_command | yaml_dquote }}
    - onchanges:
      - file: {{ id }}-forward
{%- endif %}
