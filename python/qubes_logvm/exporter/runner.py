"""The exporter's event loop: sources, transport, readiness, drain (floor 3).

Role: started by :mod:`.daemon` after the configuration is loaded; runs the
configured sources and the one transport, reports readiness to systemd
(``READY=1`` over ``NOTIFY_SOCKET``), saves acknowledged positions every
:data:`FLUSH_SECONDS`, and on SIGTERM drains what is already readable,
bounded by ``shutdown_drain``.

Trust side: runs in the source qube with the qube's trust.
"""

import asyncio
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from typing import Protocol

from ..core.errors import LogvmError
from ..daemon_support import sd_notify
from .config import ExporterConfig
from .state import StateDir
from .stdin import StdinSource
from .transport import Spawn, Transport

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5


class Source(Protocol):
    """What the runner needs of a source."""

    name: str

    async def run(self, transport: Transport, stop: asyncio.Event) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def build_sources(
    config: ExporterConfig,
    *,
    stdin_only: bool,
    tag: str = "stdin",
    priority: int = 6,
    spawn: Spawn = asyncio.create_subprocess_exec,
) -> list[Source]:
    """Build the sources; only ``--stdin`` when asked (no state dir needed)."""
    if stdin_only:
        return [StdinSource(tag=tag, priority=priority)]
    state = StateDir(config.state_dir)
    sources: list[Source] = []
    # Imported only when configured: every module costs RSS in every qube.
    if config.journal.enabled:
        from .journal import JournalSource

        sources.append(JournalSource(config.journal, state))
    if config.files:
        from .files import FilesSource

        sources.append(FilesSource(config.files, state))
    if config.dom0.enabled and (config.dom0.consoles or config.dom0.qubes_logs):
        from .dom0 import DeliverySource

        sources.append(DeliverySource(config, state, spawn))
    if config.syslog.enabled:
        from .syslog import SyslogSource

        sources.append(SyslogSource(config.syslog))
    if config.stdin:
        sources.append(StdinSource())
    if not sources:
        raise LogvmError("no source is enabled in the configuration")
    return sources


def main_command(config: ExporterConfig) -> Sequence[str]:
    """The call for this qube's own logs: dom0 calls the LogVM directly."""
    if config.dom0.enabled:
        from .dom0 import dom0_command

        return dom0_command(config.dom0)
    return config.qrexec_command


async def _flusher(sources: Sequence[Source]) -> None:
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        for source in sources:
            source.flush()


async def _drain(
    sources: Sequence[Source],
    tasks: Sequence["asyncio.Task[None]"],
    transport: Transport,
    link: "asyncio.Task[None]",
    limit: float,
) -> bool:
    """Let sources read to their end, then send and await acks, within ``limit``."""

    async def finish() -> None:
        await asyncio.gather(*tasks)
        transport.finish()
        await link

    try:
        await asyncio.wait_for(finish(), limit)
    except TimeoutError:
        log.warning(
            "shutdown: %d lines not acknowledged within %.1fs; journal and file "
            "positions stay unsaved, so they are sent again at the next start",
            transport.pending(),
            limit,
        )
    for source in sources:
        source.flush()
    return transport.pending() == 0


async def run_exporter(
    config: ExporterConfig,
    sources: Sequence[Source],
    *,
    spawn: Spawn = asyncio.create_subprocess_exec,
    environ: Mapping[str, str] = os.environ,
) -> bool:
    """Run until SIGTERM/SIGINT (or every source ended); True if all was acked."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # A stray SIGHUP (a habit from other daemons) must not kill the exporter;
    # config changes take a restart, which loses nothing.
    loop.add_signal_handler(
        signal.SIGHUP, log.warning, "SIGHUP ignored: restart logvm-exporter to apply config"
    )
    transport = Transport(
        main_command(config),
        max_lines=config.batch_max_lines,
        max_delay=config.batch_max_delay,
        backoff_initial=config.backoff_initial,
        backoff_max=config.backoff_max,
        ack_timeout=config.ack_timeout,
        spawn=spawn,
    )
    for source in sources:
        start = getattr(source, "start", None)
        if start is not None:
            await start()
    link = asyncio.create_task(transport.run())
    tasks = [asyncio.create_task(source.run(transport, stop)) for source in sources]
    flusher = asyncio.create_task(_flusher(sources))
    sd_notify("READY=1", environ)
    log.info("exporter ready: %s", ", ".join(source.name for source in sources))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopper, link, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if link.done():
            link.result()  # a crash of the transport is a bug: surface it
        stop.set()
        sd_notify("STOPPING=1", environ)
        return await _drain(sources, tasks, transport, link, config.shutdown_drain)
    finally:
        for task in (stopper, flusher, link, *tasks):
            task.cancel()
        await asyncio.gather(stopper, flusher, link, *tasks, return_exceptions=True)
        for source in sources:
            source.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
