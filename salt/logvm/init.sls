{#- logvm (dom0): `qubesctl state.apply logvm` checks the pillar against the
    qubes that exist, then creates the LogVM and its offline disposable
    template, installs the qrexec policy, turns on the exporter in the
    selected source qubes, sets up the witness and dom0's own exporter
    (logvm.dom0). The template and LogVM parts run in those qubes: logvm.template and logvm.collector (init.top
    targets all three places). -#}
{%- from tpldir ~ '/map.jinja' import logvm with context %}
{%- from tpldir ~ '/sources.jinja' import selected with context %}
{#- Before anything changes: qubes named in pillar exist, and the LogVM's,
    the witness's and every source qube's template is in logvm:templates. -#}
{%- do salt['logvm.dom0_check'](logvm, selected) %}
include:
  - .create
  - .policy
  - .sources
  - .witness
  - .dom0
