{#- logvm.forwarder (in the forwarder qube, `qubesctl --skip-dom0
    --targets=sys-logfwd state.apply logvm.forwarder`; init.top targets it
    when logvm:forward:enabled): the qrexec service logvm.Forward as a
    symlink to /dev/tcp/ADDRESS/PORT (qrexec connects the call to that TCP
    address; the qube sees only TLS ciphertext), with skip-service-descriptor
    so that qrexec writes nothing into the TLS stream. Both live under
    /usr/local, which an AppVM keeps across reboots (/rw/usrlocal), and which
    qrexec searches before /etc. -#}
{%- from tpldir ~ '/map.jinja' import logvm with context %}
{%- set id = sls | replace('.', '-') %}
{%- set server = logvm.forward.server %}

{{ id }}-service:
  file.symlink:
    - name: /usr/local/etc/qubes-rpc/logvm.Forward
    - target: /dev/tcp/{{ server.address }}/{{ server.port }}
    - force: true
    - makedirs: true

{{ id }}-service-config:
  file.managed:
    - name: /usr/local/etc/qubes/rpc-config/logvm.Forward
    - contents: |
        # logvm.Forward: a TCP stream to the central syslog server (logvm formula)
        skip-service-descriptor = true
    - mode: '0644'
    - makedirs: true
