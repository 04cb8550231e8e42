"""dom0 as a source: each qube's Xen console and dom0's per-qube logs (floor 3).

Role: in dom0, ``logvm-exporter`` (with ``dom0: {enabled: true}``) reads
dom0's journal like any qube (chain ``dom0``) and, with this source, follows
``/var/log/xen/console/guest-X.log`` and ``/var/log/qubes/KIND.X.log`` as they
appear, rotate and vanish (the VM exporter's file follower, one
implementation). What belongs to qube X is delivered with X's own call,
``qrexec-client -d LOGVM 'DEFAULT:QUBESRPC logvm.Send+for.X dom0'``: the
collector stores it in X's chain as dom0's delivery (docs/protocol.md,
docs/store-format.md). dom0 calls the LogVM itself: no policy, and no
autostart (a halted LogVM makes the client fail; the transport retries with
backoff and positions stay where the LogVM last acknowledged).

A delivery connection closes once its qube's files are gone, or nothing came
for ``idle_close``: the qube's session in the LogVM ends (a DispVM's segment
then follows the DispVM retention). With ``remove_dispvm_consoles`` a DispVM's
console file is removed once everything in it was acknowledged and the
DispVM is no longer running (no ``qrexec.<name>`` socket of its daemon).

Trust side: console files hold what the qube printed (hostile); this module
never parses them: the file follower splits lines, bounds and escapes them.
Only file *names*, which dom0's own daemons chose, are read to route.
"""

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass

from ..core.errors import InvalidQubeName
from ..core.names import (
    ADMIN_QUBE,
    DELIVERY_PREFIX,
    SEND_SERVICE,
    is_dispvm_name,
    validate_qube_name,
)
from .config import Dom0Config, ExporterConfig, FileConfig
from .files import POLL_SECONDS, FilesSource, _Follower, _stat
from .state import StateDir
from .transport import WINDOW_BYTES, WINDOW_LINES, Spawn, Transport, Window

log = logging.getLogger(__name__)

CONSOLE_TAG = "console"
#: qubes-core-admin ``validate_name``: "VM name cannot end with -dm", so
#: ``guest-X-dm.log`` is always the console of X's device-model stubdomain.
STUBDOM_SUFFIX = "-dm"


def dom0_command(config: Dom0Config, qube: str | None = None) -> list[str]:
    """dom0's call of ``logvm.Send`` in the LogVM, for its own logs or for ``qube``'s.

    The LogVM is ``qube``'s route (several LogVMs: the one the policy sends
    ``qube``'s own calls to), else ``logvm``.

    qubesadmin's ``QubesLocal.run_service`` runs ``qrexec-client -d VM
    DEFAULT:QUBESRPC SERVICE+ dom0`` (a ``+`` appended when there is no
    argument): the same, minus its ``admin.vm.Start`` (never start the LogVM).
    """
    argument = "" if qube is None else DELIVERY_PREFIX + qube
    return [
        config.qrexec_client,
        "-d",
        logvm_of(config, qube or ADMIN_QUBE),
        f"DEFAULT:QUBESRPC {SEND_SERVICE}+{argument} {ADMIN_QUBE}",
    ]


def logvm_of(config: Dom0Config, qube: str) -> str:
    """The LogVM ``qube``'s logs go to: its route, else ``logvm``."""
    return dict(config.routes).get(qube, config.logvm)


def _qube(name: str) -> tuple[str, str] | None:
    """(qube, suffix for the tag) of a qube name in a file name; None if not one."""
    suffix = ""
    if name.endswith(STUBDOM_SUFFIX):
        name, suffix = name[: -len(STUBDOM_SUFFIX)], STUBDOM_SUFFIX
    try:
        return validate_qube_name(name), suffix
    except InvalidQubeName:
        return None


def route(path: str, config: Dom0Config) -> tuple[str, str] | None:
    """(qube, tag) for a followed file: whose chain it goes to, and as what.

    ``guest-X.log`` -> (X, ``console``); ``guest-X-dm.log`` -> (X,
    ``console-dm``); ``/var/log/qubes/KIND.X.log`` -> (X, KIND); any other
    ``/var/log/qubes/NAME.log`` is dom0's own (``dom0``, NAME). None: not
    followed (not a file dom0 ships, or X is in ``exclude``).
    """
    found = _route(path, config)
    return None if found is None or found[0] in config.exclude else found


def _route(path: str, config: Dom0Config) -> tuple[str, str] | None:
    directory, name = os.path.split(path)
    if not name.endswith(".log"):
        return None
    stem = name[: -len(".log")]
    if directory == config.console_dir.rstrip("/") and stem.startswith("guest-"):
        found = _qube(stem[len("guest-") :])
        return None if found is None else (found[0], CONSOLE_TAG + found[1])
    if directory == config.qubes_log_dir.rstrip("/"):
        kind, dot, rest = stem.partition(".")
        found = _qube(rest) if dot else None
        if found is None or found[0] == ADMIN_QUBE:
            return ADMIN_QUBE, stem
        return found[0], kind + found[1]
    return None


def file_specs(config: Dom0Config) -> tuple[FileConfig, ...]:
    """The globs dom0 follows (tags come from :func:`route`)."""
    specs = []
    if config.consoles:
        specs.append(FileConfig(os.path.join(config.console_dir, "guest-*.log"), CONSOLE_TAG))
    if config.qubes_logs:
        specs.append(FileConfig(os.path.join(config.qubes_log_dir, "*.log"), "qubes"))
    return tuple(specs)


@dataclass
class _Delivery:
    transport: Transport
    task: "asyncio.Task[None]"
    last: float


class DeliverySource(FilesSource):
    """dom0's per-qube files, each qube's lines on its own delivery call."""

    name = "dom0-files"
    state_name = "dom0-files"

    def __init__(self, config: ExporterConfig, state: StateDir, spawn: Spawn) -> None:
        self._config = config
        self._dom0 = config.dom0
        self._spawn = spawn
        self.qube_of: dict[str, str] = {}
        self._deliveries: dict[str, _Delivery] = {}
        self._closing: list[_Delivery] = []
        # One window per LogVM, shared by the calls of the qubes routed to
        # it; the LogVMs split one window's bound. Memory stays within that
        # (plus one polling round), however many qubes have a backlog, and a
        # halted or stuck LogVM fills only its own share: files routed to it
        # wait unread (see _ready) while the other LogVMs' keep flowing.
        logvms = sorted({self._dom0.logvm, *(logvm for _, logvm in self._dom0.routes)})
        self._windows = {
            logvm: Window(WINDOW_LINES // len(logvms), WINDOW_BYTES // len(logvms))
            for logvm in logvms
        }
        self._blocked: set[Window] = set()  # full windows met in this round
        super().__init__(file_specs(config.dom0), state)

    def _open(self, path: str, tag: str, *, resume: bool) -> None:
        target = route(path, self._dom0)
        if target is None:
            return
        self.qube_of[path] = target[0]
        super()._open(path, target[1], resume=resume)

    # -- delivery calls ------------------------------------------------------

    def _delivery(self, qube: str) -> Transport:
        current = self._deliveries.get(qube)
        if current is None:
            config = self._config
            transport = Transport(
                dom0_command(self._dom0, None if qube == ADMIN_QUBE else qube),
                max_lines=config.batch_max_lines,
                max_delay=config.batch_max_delay,
                backoff_initial=config.backoff_initial,
                backoff_max=config.backoff_max,
                ack_timeout=config.ack_timeout,
                window=self._windows[logvm_of(self._dom0, qube)],
                spawn=self._spawn,
            )
            task = asyncio.create_task(transport.run())
            current = self._deliveries[qube] = _Delivery(transport, task, time.monotonic())
        current.last = time.monotonic()
        return current.transport

    def _ready(self, follower: _Follower) -> bool:
        """Read a file only while its LogVM's window has room."""
        qube = self.qube_of.get(follower.path, ADMIN_QUBE)
        window = self._windows[logvm_of(self._dom0, qube)]
        if window.has_room():
            return True
        self._blocked.add(window)
        return False

    def _retire(self) -> None:
        """Finish calls whose qube has no file left, or that were idle too long."""
        now = time.monotonic()
        followed = {self.qube_of.get(path) for path in self._followers}
        for qube, delivery in list(self._deliveries.items()):
            idle = now - delivery.last >= self._dom0.idle_close
            if delivery.transport.pending() == 0 and (idle or qube not in followed):
                delivery.transport.finish()
                self._closing.append(delivery)
                del self._deliveries[qube]
        self._closing = [d for d in self._closing if not d.task.done()]

    def _running(self, qube: str) -> bool:
        return os.path.exists(os.path.join(self._dom0.qrexec_socket_dir, f"qrexec.{qube}"))

    def _remove_acked_consoles(self) -> None:
        """DispVM consoles whose every line the LogVM holds, once the DispVM is gone."""
        if not self._dom0.remove_dispvm_consoles:
            return
        for path, follower in list(self._followers.items()):
            qube = self.qube_of.get(path, "")
            acked = self._acked.get(path)
            if not is_dispvm_name(qube) or acked is None or not follower.tag.startswith("console"):
                continue
            st = _stat(path)
            if st is None or (st.st_dev, st.st_ino) != follower.ident:
                continue
            if acked.get("offset") == st.st_size == follower.offset and not self._running(qube):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                log.info("dom0: removed %s (all acknowledged, %s is gone)", path, qube)

    # -- the source ----------------------------------------------------------

    async def run(self, transport: Transport, stop: asyncio.Event) -> None:
        """Follow until ``stop``; then send what is left and close every call."""
        del transport  # dom0's own journal uses it; each qube has its own call
        while True:
            self._blocked.clear()
            chunks = self.poll()
            for data, lines, position in chunks:
                qube = self.qube_of.get(position[0], ADMIN_QUBE)
                # Never waits: a stuck LogVM must not hold up the others.
                self._delivery(qube).queue(data, lines, self, position)
            self._retire()
            self._remove_acked_consoles()
            if chunks:
                continue
            if stop.is_set():
                break
            await self._pause(stop)
        calls = [*self._deliveries.values(), *self._closing]
        for delivery in calls:
            delivery.transport.finish()
        await asyncio.gather(*(d.task for d in calls))

    async def _pause(self, stop: asyncio.Event) -> None:
        """Until the next poll, ``stop``, or room in a window whose files waited."""
        waits = [stop.wait(), *(window.wait_room() for window in self._blocked)]
        tasks = [asyncio.ensure_future(wait) for wait in waits]
        await asyncio.wait(tasks, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()

    def pending(self) -> int:
        """Lines of every delivery call not yet acknowledged."""
        calls = [*self._deliveries.values(), *self._closing]
        return sum(d.transport.pending() for d in calls)

    def close(self) -> None:
        """Close files and stop every call still running."""
        for delivery in [*self._deliveries.values(), *self._closing]:
            delivery.task.cancel()
        super().close()
