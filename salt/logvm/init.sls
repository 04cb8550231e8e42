{#- logvm (dom0): `qubesctl state.apply logvm` creates the LogVM, installs
    the qrexec policy, turns on the exporter in the selected source qubes and
    sets up the witness. The template and LogVM parts run in those qubes:
    logvm.template and logvm.collector. -#}
include:
  - .create
  - .policy
  - .sources
  - .witness
