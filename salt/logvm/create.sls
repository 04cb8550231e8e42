{#- logvm.create (dom0): the LogVM itself, with no network, started at boot,
    marked by a tag and with the collector's service flag, and its offline
    disposable template (its default_dispvm). -#}
{%- from tpldir ~ '/map.jinja' import logvm, disk_bytes with context %}
{%- set id = sls | replace('.', '-') %}
{%- set vm = logvm.vm %}

{#- The offline disposable template for `logvm open`: the LogVM's template,
    no network, and template_for_dispvms ("Should this VM be allowed to start
    as Disposable VM", qubes-core-admin qubes/vm/mix/dvmtemplate.py), so that
    `qvm-open-in-dvm` in the LogVM starts an offline DispVM. It must exist
    before the LogVM names it as default_dispvm. Its own default_dispvm is
    none: nothing opened in it goes on to a networked DispVM. #}
{{ id }}-dispvm-template:
  qvm.vm:
    - name: {{ vm.dispvm.name }}
    - present:
      - class: AppVM
      - template: {{ vm.template }}
      - label: {{ vm.dispvm.label }}
    - prefs:
      - label: {{ vm.dispvm.label }}
      - netvm: none
      - template-for-dispvms: true
      - default-dispvm: none

{#- The LogVM, and each further LogVM of logvm:logvms made the same way. #}
{%- for name in [vm.name] + logvm.logvms | sort %}
{%-   set suffix = '' if name == vm.name else '-' ~ name %}

{{ id }}-qube{{ suffix }}:
  qvm.vm:
    - require:
      - qvm: {{ id }}-dispvm-template
    - name: {{ name }}
    - present:
      - class: AppVM
      - template: {{ vm.template }}
      - label: {{ vm.label }}
      - mem: {{ vm.memory }}
      - vcpus: {{ vm.vcpus }}
    - prefs:
      - label: {{ vm.label }}
      - netvm: none
      - autostart: {{ vm.autostart }}
      - memory: {{ vm.memory }}
      - maxmem: {{ vm.maxmem }}
      - vcpus: {{ vm.vcpus }}
      - include-in-backups: true
      - default-dispvm: {{ vm.dispvm.name }}
    - service:
      - enable:
        - logvm-collector
    - tags:
      - add:
        - {{ vm.tag | yaml_dquote }}

{#- The private volume holds the store; qvm.vm has no volume action, so
    qvm-volume grows it (it never shrinks: shrinking would lose logs). #}
{{ id }}-private-size{{ suffix }}:
  cmd.run:
    - name: qvm-volume resize {{ name }}:private {{ disk_bytes }}
    - unless: test "$(qvm-volume info {{ name }}:private size)" -ge {{ disk_bytes }}
    - require:
      - qvm: {{ id }}-qube{{ suffix }}

{#- logvm-browser (owned by gui, docs/browser.md) in the LogVM's app menu:
    dom0's app menu lists the .desktop names of the `menu-items` feature
    (space-separated), from the template's /usr/share/applications. #}
{{ id }}-menu-items{{ suffix }}:
  qvm.features:
    - name: {{ name }}
    - set:
      - menu-items: "logvm-browser.desktop"
    - require:
      - qvm: {{ id }}-qube{{ suffix }}
{%- endfor %}

{#- Forwarding (logvm:forward, docs/forwarding.md): the LogVM's service flag
    for logvm-forward (back to unset when forwarding is off), and the
    forwarder qube when the formula creates it: network-attached (the
    system's default netvm unless forwarder:netvm names one), small, no
    other role (no services, no disposables); qrexec starts it when the
    LogVM calls logvm.Forward. Its service link is logvm.forwarder, applied
    in that qube. #}
{%- set fwd = logvm.forward %}
{{ id }}-forward-flag:
  qvm.service:
    - name: {{ vm.name }}
    - {{ 'enable' if fwd.enabled else 'default' }}:
      - logvm-forward
    - require:
      - qvm: {{ id }}-qube
{%- if fwd.enabled and fwd.forwarder.create %}

{{ id }}-forwarder:
  qvm.vm:
    - name: {{ fwd.forwarder.name }}
    - present:
      - class: AppVM
      - template: {{ fwd.forwarder.template or vm.template }}
      - label: {{ fwd.forwarder.label }}
      - mem: {{ fwd.forwarder.memory }}
    - prefs:
      - label: {{ fwd.forwarder.label }}
{%- if fwd.forwarder.netvm %}
      - netvm: {{ fwd.forwarder.netvm }}
{%- endif %}
      - memory: {{ fwd.forwarder.memory }}
      - maxmem: {{ fwd.forwarder.memory }}
      - default-dispvm: none
    - tags:
      - add:
        - logvm-forwarder
{%- endif %}
