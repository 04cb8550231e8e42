{#- logvm.clean: undoes the formula, in reverse order, wherever it runs:
    `qubesctl --skip-dom0 --targets=TEMPLATES,LOGVM state.apply logvm.clean`
    first, then `qubesctl state.apply logvm.clean` in dom0. The offline
    disposable template the formula made, the verification timer and dom0's
    exporter go.
    Stored logs are never deleted: the LogVM and its private volume stay (remove it yourself
    with qvm-remove once you no longer need the logs), and so do the
    witness's checkpoints. -#}
{%- from tpldir ~ '/map.jinja' import logvm, logvm_paths with context %}
{%- set id = sls | replace('.', '-') %}
{%- if grains['id'] == 'dom0' %}
{%-   from tpldir ~ '/sources.jinja' import selected with context %}
{%-   for name in selected | reverse %}

{{ id }}-source-{{ name }}:
  qvm.vm:
    - name: {{ name }}
    - service:
      - default:
        - logvm-exporter
    - tags:
      - del:
        - {{ logvm.sources.dispvm_tag | yaml_dquote }}
{%-   endfor %}

{{ id }}-policy:
  file.absent:
    - name: {{ logvm_paths.policy }}

{#- dom0's exporter (logvm.dom0): no longer enabled or configured, stopped;
    its positions stay with the package. #}
{{ id }}-dom0-exporter-enable:
  file.absent:
    - name: /etc/systemd/system/multi-user.target.wants/logvm-exporter-dom0.service

{{ id }}-dom0-exporter-config:
  file.absent:
    - name: {{ logvm_paths.dom0_exporter }}

{{ id }}-dom0-exporter-stop:
  cmd.run:
    - name: {{ logvm.system.dom0_exporter_stop_command | yaml_dquote }}
    - onchanges:
      - file: {{ id }}-dom0-exporter-enable
      - file: {{ id }}-dom0-exporter-config
{%-   set timer = 'logvm-witness-verify.timer' %}
{#- The outside verification's timer and the files logvm.witness wrote. #}
{%-   set paths = ['/etc/systemd/user/timers.target.wants/' ~ timer,
                   '/etc/systemd/user/' ~ timer ~ '.d/50-logvm-schedule.conf',
                   '/etc/qubes-logvm/witness-verify.conf',
                   '/etc/qubes-logvm/witness-policy/' ~ logvm.vm.name ~ '.json'] %}
{%-   for name in logvm.logvms | sort %}
{%-     do paths.append('/etc/qubes-logvm/witness-policy/' ~ name ~ '.json') %}
{%-   endfor %}
{%-   for path in paths %}

{{ id }}-verify-{{ loop.index }}:
  file.absent:
    - name: {{ path }}
{%-   endfor %}

{#- Keep the qube (its private volume holds the logs); stop it running the
    collector and starting at boot, drop the browser's menu entry and the
    formula's tag. #}
{%-   for name in [logvm.vm.name] + logvm.logvms | sort %}
{%-     set suffix = '' if name == logvm.vm.name else '-' ~ name %}

{{ id }}-logvm{{ suffix }}:
  qvm.vm:
    - name: {{ name }}
    - actions:
      - exists: pass
      - prefs
      - features
      - service
      - tags
    - exists: []
    - prefs:
      - autostart: false
      - default-dispvm: '*default*'
    - features:
      - default:
        - menu-items
    - service:
      - default:
        - logvm-collector
    - tags:
      - del:
        - {{ logvm.vm.tag | yaml_dquote }}
{%-   endfor %}

{#- The offline disposable template the formula made for the LogVM holds no
    logs; once the LogVM no longer names it, it goes. #}
{{ id }}-dispvm-template:
  qvm.absent:
    - name: {{ logvm.vm.dispvm.name }}
    - require:
{%-   for name in [logvm.vm.name] + logvm.logvms | sort %}
      - qvm: {{ id }}-logvm{{ '' if name == logvm.vm.name else '-' ~ name }}
{%-   endfor %}
{%- elif grains['id'] in [logvm.vm.name] + logvm.logvms | list %}

{{ id }}-limits:
  file.absent:
    - name: {{ logvm_paths.override }}

{{ id }}-reload:
  cmd.run:
    - name: {{ logvm.system.reload_command | yaml_dquote }}
    - onchanges:
      - file: {{ id }}-limits
{%- else %}

{{ id }}-collector-config:
  file.absent:
    - name: {{ logvm_paths.collector }}

{{ id }}-exporter-config:
  file.absent:
    - name: {{ logvm_paths.exporter }}


{{ id }}-package:
  pkg.removed:
    - name: qubes-logvm
    - require:
      - file: {{ id }}-collector-config
      - file: {{ id }}-exporter-config
{%- endif %}
