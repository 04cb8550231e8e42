"""dom0's exporter: which chain each of dom0's files goes to (file names only)."""

import pytest

from qubes_logvm.core.errors import ConfigError
from qubes_logvm.exporter.config import Dom0Config, parse_exporter_config
from qubes_logvm.exporter.dom0 import dom0_command, route

pytestmark = pytest.mark.inprocess
CONFIG = Dom0Config(enabled=True, exclude=("vault",))


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/var/log/xen/console/guest-work.log", ("work", "console")),
        # the device-model stubdomain of an HVM (no qube name ends in -dm)
        ("/var/log/xen/console/guest-sys-net-dm.log", ("sys-net", "console-dm")),
        ("/var/log/xen/console/guest-disp12.log", ("disp12", "console")),
        ("/var/log/qubes/qrexec.work.log", ("work", "qrexec")),
        ("/var/log/qubes/guid.disp12.log", ("disp12", "guid")),
        # dom0's own files in /var/log/qubes stay dom0's
        ("/var/log/qubes/qubes.log", ("dom0", "qubes")),
        ("/var/log/qubes/qrexec.dom0.log", ("dom0", "qrexec.dom0")),
        # not followed: other consoles, rotated copies, a name no qube has
        ("/var/log/xen/console/hypervisor.log", None),
        ("/var/log/xen/console/guest-work.log.1", None),
        ("/var/log/xen/console/guest-9bad.log", None),
        ("/var/log/elsewhere/guest-work.log", None),
        # an excluded source: none of its files leave dom0
        ("/var/log/xen/console/guest-vault.log", None),
        ("/var/log/xen/console/guest-vault-dm.log", None),
        ("/var/log/qubes/qrexec.vault.log", None),
    ],
)
def test_route(path: str, expected: tuple[str, str] | None) -> None:
    assert route(path, CONFIG) == expected


def test_the_exact_qrexec_calls() -> None:
    config = Dom0Config(enabled=True, logvm="sys-log")
    assert dom0_command(config) == [
        "/usr/bin/qrexec-client", "-d", "sys-log", "DEFAULT:QUBESRPC logvm.Send+ dom0",
    ]  # fmt: skip
    assert dom0_command(config, "work")[-1] == "DEFAULT:QUBESRPC logvm.Send+for.work dom0"
    # several LogVMs: a qube's files go to the LogVM its own logs go to
    routed = Dom0Config(enabled=True, logvm="sys-log", routes=(("sys-net", "sys-log-net"),))
    assert dom0_command(routed, "sys-net")[2] == "sys-log-net"
    assert dom0_command(routed, "work")[2] == dom0_command(routed)[2] == "sys-log"


@pytest.mark.parametrize(
    ("dom0", "message"),
    [
        ({"exclude": ["bad name"]}, "dom0.exclude"),
        ({"exclude": "vault"}, "dom0.exclude"),
        ({"logvm": "9x"}, "dom0.logvm"),
        ({"exlude": []}, "dom0.exlude"),
        ({"routes": ["work"]}, "dom0.routes"),
        ({"routes": {"work": "bad name"}}, "dom0.routes"),
    ],
)
def test_bad_dom0_settings_name_the_key(dom0: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_exporter_config({"dom0": dom0})
