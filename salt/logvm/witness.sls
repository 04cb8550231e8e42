{#- logvm.witness (dom0): the witness end of checkpoints. In dom0 the
    logvm.Witness service comes with qubes-logvm-dom0 and keeps its
    checkpoints in /var/lib/qubes-logvm-witness (root:qubes 0770, as the
    package makes it). Another witness qube must exist; its template gets the
    VM package (which carries the service) through logvm.template. -#}
{%- from tpldir ~ '/map.jinja' import logvm with context %}
{%- set id = sls | replace('.', '-') %}
{%- if logvm.witness == 'dom0' %}

{{ id }}-dom0-package:
  pkg.installed:
    - name: qubes-logvm-dom0
    - require_in:
      - file: {{ id }}-dom0-state

{{ id }}-dom0-state:
  file.directory:
    - name: /var/lib/qubes-logvm-witness
    - user: root
    - group: qubes
    - mode: '0770'
    - makedirs: false
{#- The retention policy dom0 deploys (the collector section as rendered
    for the LogVM): logvm-witness export passes it on unread, and verify
    --witness refuses deletions it would not make (docs/witness.md). #}

{%-   for name in [logvm.vm.name] + logvm.logvms | sort %}
{%-     set collector = logvm.collector %}
{%-     if 'quota' in logvm.logvms.get(name, {}) %}
{%-       set quota = salt['slsutil.merge'](collector.quota, {'default': logvm.logvms[name].quota}) %}
{%-       set collector = salt['slsutil.merge'](collector, {'quota': quota}) %}
{%-     endif %}

{{ id }}-deployed-policy{{ '' if name == logvm.vm.name else '-' ~ name }}:
  file.managed:
    - name: /etc/qubes-logvm/witness-policy/{{ name }}.json
    - contents: {{ collector | json | yaml_squote }}
    - mode: '0644'
    - makedirs: True
{%-   endfor %}
{%-   set verify = logvm.verify %}
{%-   set timer = 'logvm-witness-verify.timer' %}
{%-   set wants = '/etc/systemd/user/timers.target.wants/' ~ timer %}
{#- Outside verification: the dom0 user's timer (systemctl --global enable
    is this symlink), its schedule, and the disposable template. #}

{{ id }}-verify-conf:
  file.managed:
    - name: /etc/qubes-logvm/witness-verify.conf
    - contents: |
        # Written by the logvm formula from pillar logvm:verify (docs/salt.md).
        LOGVM_VERIFY_DISPVM={{ verify.dispvm_template or logvm.vm.dispvm.name }}
    - mode: '0644'
    - makedirs: True

{{ id }}-verify-schedule:
  file.managed:
    - name: /etc/systemd/user/{{ timer }}.d/50-logvm-schedule.conf
    - contents: |
        # Written by the logvm formula from pillar logvm:verify:schedule.
        [Timer]
        OnCalendar=
        OnCalendar={{ verify.schedule }}
    - mode: '0644'
    - makedirs: True
{%-   if verify.enabled %}

{{ id }}-verify-timer:
  file.symlink:
    - name: {{ wants }}
    - target: /usr/lib/systemd/user/{{ timer }}
    - makedirs: True
{%-   else %}

{{ id }}-verify-timer:
  file.absent:
    - name: {{ wants }}
{%-   endif %}
{%- else %}

{{ id }}-qube:
  qvm.exists:
    - name: {{ logvm.witness }}
{%- endif %}
