"""``logvm-collector``: the LogVM's daemon behind the ``logvm.Send`` qrexec service.

Trust side: runs in the LogVM as the store's owner, the only process holding
the sealing key. Its peers are the qrexec agent (root) relaying untrusted
qubes; see :mod:`.server` for the connection side and :mod:`.qubewriter` for
the per-qube writers.

Besides the connections it runs: the epoch timer (every ``epoch_seconds`` of
store.json every open segment is sealed and the key evolves), housekeeping
(segment age, quota and retention deletions with sealed tombstones) and,
when configured, the checkpoint sender to the witness.
"""

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..config.collector import CollectorConfig, load_collector_config
from ..config.storage_policy import RetentionConfig, quota_for, settings_digest
from ..core.epochseal import EpochLine
from ..core.errors import LogvmError
from ..core.faults import fail_point
from ..core.retire import Retire
from ..core.seal import Seal
from ..core.tomb import Tomb
from ..core.witness_format import CostLine, SettingsLine
from ..daemon_support import EXIT_OK, fatal, listen_fds, sd_notify, setup_logging
from ..store.eviction import Planned, plan_deletions
from ..store.keystate import setup_keys
from ..store.layout import StoreLayout, add_store_argument
from ..store.retired import retirable
from ..store.usage import ZERO_COST, Cost, qube_usage
from ..store.witness_pending import queue_registration
from ..store.writer import Store
from .peers import resolve_group
from .qubewriter import StoreAccess, to_completion
from .server import Server, bind_socket
from .witness_sender import CheckpointSender

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/qubes-logvm/logvm.Send.sock")
SHUTDOWN_TIMEOUT = 30.0
#: Housekeeping waits at most this many intervals after repeated failures.
HOUSEKEEPING_BACKOFF = 8


def _listening_socket(path: Path, config: CollectorConfig) -> socket.socket:
    fds = listen_fds()
    if fds:
        sock = socket.socket(fileno=fds[0])
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise LogvmError("the socket passed by systemd is not a Unix stream socket")
        log.info("listening on the socket passed by systemd")
        return sock
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("listening on %s", path)
    return bind_socket(path, resolve_group(config.allowed_group))


def _log_task_error(task: str, err: Exception) -> None:
    """A long-lived task's error: one line for expected ones, a traceback for bugs."""
    if isinstance(err, LogvmError | OSError):
        log.error("%s: %s (retrying)", task, err)
    else:
        log.exception("%s failed (retrying)", task)


class Daemon:
    """The running collector: server, timers and signal handling."""

    def __init__(self, store_root: Path, config: CollectorConfig, config_paths: list[Path]):
        self.store_root = store_root
        self.config_paths = config_paths
        self.store = Store(
            store_root,
            on_seal=self._on_seal,
            on_tomb=self._on_seal,
            on_epoch=self._on_seal,
            on_retire=self._on_seal,
        )
        self.shared = StoreAccess(self.store, config)
        self.shared.on_cost = self._on_seal
        self.server = Server(self.shared)
        # Each qube's quota under the current retention settings (resync).
        self._quotas: tuple[RetentionConfig | None, dict[str, int]] = (None, {})
        self.sender: CheckpointSender | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._stop_early = False  # a SIGTERM before the event loop ran
        #: Qubes retired at the first housekeeping pass (fully deleted before a restart).
        self._unretired: set[str] = set()

    def stop_early(self, _signum: int, _frame: object) -> None:
        """Signal handler from before :meth:`run`: the socket listens already."""
        self._stop_early = True
        self._settings_task: asyncio.Task[None] | None = None

    def _on_seal(self, seal: Seal | Tomb | EpochLine | CostLine | Retire) -> None:
        # Called from worker threads after the seal (tombstone, epoch line) is durable.
        if self.sender is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.sender.submit, seal)

    async def run(self, sock: socket.socket) -> None:
        """Serve until SIGTERM, then drain, seal and close."""
        self._loop = asyncio.get_running_loop()
        # First: a SIGTERM during recovery stops the collector right after it.
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._stop.set)
        self._loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self._stop_early:
            self._stop.set()
        # Chain work has its own threads (fair.ChainSlots); this one is for
        # the epoch tick, recovery and the housekeeping scans.
        self._loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="store")
        )
        witness = self.shared.config.witness
        if witness.target is not None or witness.command:
            self.sender = CheckpointSender(
                self.store_root, command=witness.argv(), interval=witness.interval_seconds
            )
            self.sender.start()
            await self._report_settings()
        recovered = await self._loop.run_in_executor(None, self.store.recover_all)
        for qube, count in recovered.items():
            log.warning("%s: sealed %d records a crash had left unsealed", qube, count)
        if self.store.quarantined:
            log.error(
                "%d qube(s) quarantined at start, all others are logged: %s",
                len(self.store.quarantined),
                ", ".join(sorted(self.store.quarantined)),
            )
        scanned = await self._loop.run_in_executor(None, self._scan_usage)
        self._resync(scanned)
        await self._loop.run_in_executor(None, self._report_start_deletions)
        await self.server.start(sock)
        tasks = [
            self._loop.create_task(self._epochs(), name="epochs"),
            self._loop.create_task(self._housekeeping(), name="housekeeping"),
        ]
        sd_notify("READY=1")
        await self._stop.wait()
        sd_notify("STOPPING=1")
        log.info("stopping: finishing what was received")
        self.server.stop_accepting()
        try:
            await asyncio.wait_for(self.server.drain(), SHUTDOWN_TIMEOUT)
        except TimeoutError:
            log.warning("some connections did not finish in %ss", SHUTDOWN_TIMEOUT)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # these tasks never end on an error (see _forever)
        async with self.shared.tick_lock.exclusive():
            await self._loop.run_in_executor(None, self.store.close)
        self.shared.slots.shutdown()
        if self.sender is not None:
            await self.sender.flush(5.0)
            await self.sender.stop()

    def _report_start_deletions(self) -> None:
        """Say at start when the configuration deletes logs at once (worker thread)."""
        retention = self.shared.config.retention
        try:
            plan = plan_deletions(self.store.layout, retention, self.shared.age_clock(), {})
            stats = os.statvfs(self.store.layout.root)
        except (LogvmError, OSError) as err:
            log.warning("cannot check the retention settings at start: %s", err)
            return
        if not plan:
            return
        free = stats.f_bavail * stats.f_frsize
        floor = ""
        if free < retention.global_keep_free:
            floor = (
                f"; the filesystem has {free >> 20} MiB free, below global.keep_free "
                f"({retention.global_keep_free >> 20} MiB)"
            )
        log.warning(
            "the retention settings delete %d closed segment(s) of %d qube(s) at the first "
            "housekeeping pass (quota, retention, global.max_bytes or global.keep_free)%s",
            len(plan),
            len({q for q, _ in plan}),
            floor,
        )

    def reload(self) -> None:
        """SIGHUP: read the configuration again; keep the old one if it is wrong."""
        try:
            config = load_collector_config(*self.config_paths)
        except LogvmError as err:
            log.warning("configuration not reloaded: %s", err)
            return
        self.shared.config = config
        self.shared.budget.total = config.pending_bytes_total
        for writer in self.server.writers.values():
            writer.reconfigure()
        log.info("configuration reloaded")
        if self._loop is not None:
            self._settings_task = self._loop.create_task(self._report_settings())

    async def _report_settings(self) -> None:
        """A sealed note of the retention settings in force, for the witness."""
        if self.sender is None:
            return
        digest = settings_digest(self.shared.config.retention)
        async with self.shared.tick_lock.shared():  # the key does not evolve meanwhile
            keys = self.store.keys
            note = SettingsLine(keys.epoch, digest).signed(keys.key)
        self.sender.submit(note)

    async def _epochs(self) -> None:
        # The epoch clock never stops: Store.tick evolves the key whatever
        # fails, and an error here is logged and the next epoch comes anyway.
        # It runs on the monotonic clock and never catches up: after a pause
        # or a jump of that clock one epoch passes, then one per period, so
        # ages counted in epochs (retention, DispVM grace) never leap.
        loop = asyncio.get_running_loop()
        seconds = self.store.keys.info.epoch_seconds
        due = loop.time() + seconds
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                async with self.shared.tick_lock.exclusive():
                    await to_completion(loop.run_in_executor(None, self.store.tick))
            except Exception as err:  # noqa: BLE001 (the task must survive anything)
                _log_task_error("epoch", err)
            due += seconds
            if due <= loop.time():
                due = loop.time() + seconds

    def _scan_usage(self) -> dict[str, Cost]:
        layout = self.store.layout
        usage = {qube: qube_usage(layout, qube) for qube in layout.qubes()}
        self._unretired = {qube for qube in usage if retirable(layout, qube)}
        return usage

    def _resync(self, scanned: dict[str, Cost]) -> None:
        """Reset the store's running total: the scan, but connected qubes' own figures.

        ``scanned`` has every qube's cost; most are the scan cache's quiet
        ones, whose sum the cache keeps, so the Python work here is per
        qube that changed (issue 17: 10,000 DispVM names cost 43 ms a pass
        when every cost was added up); the rest are set operations in C."""
        active = {q: w.reported for q, w in self.server.writers.items() if w.chain is not None}
        cache = self.shared.scan_cache
        quiet = cache.quiet_costs()
        if quiet.keys() <= scanned.keys():
            total = cache.quiet_total
            for qube in active.keys() & quiet.keys():
                total -= quiet[qube]
            changed = scanned.keys() - quiet.keys() - active.keys()
        else:  # the start-up scan, before the cache has seen a pass
            total, changed = ZERO_COST, scanned.keys() - active.keys()
        total = sum((scanned[q] for q in changed), total)
        total = sum(active.values(), total)
        retention = self.shared.config.retention
        if self._quotas[0] is not retention:
            self._quotas = (retention, {})
        known = self._quotas[1]  # exactly the current qubes' quotas
        names = scanned.keys() | active.keys()
        for qube in known.keys() - names:
            del known[qube]
        for qube in names - known.keys():
            known[qube] = quota_for(retention, qube)
        self.shared.usage.resync(total, dict(known))

    async def _housekeeping(self) -> None:
        # Survives any error; after failures it waits longer (up to
        # HOUSEKEEPING_BACKOFF times the interval), so a full or failing
        # disk is not hammered, and it goes back to normal on success.
        failures = 0
        while True:
            interval = self.shared.config.housekeeping_seconds
            # Early when a writer found the global cap exceeded (qubewriter).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.shared.pressure.wait(), interval * min(2**failures, HOUSEKEEPING_BACKOFF)
                )
            self.shared.pressure.clear()
            try:
                await self._housekeep()
                failures = 0
            except Exception as err:  # noqa: BLE001 (the task must survive anything)
                failures += 1
                _log_task_error("housekeeping", err)

    async def _housekeep(self) -> None:
        retention = self.shared.config.retention
        for writer in list(self.server.writers.values()):
            chain = writer.chain
            if chain is not None and chain.is_open and writer.open_age > retention.segment_max_age:
                writer.request_roll()
            await self.shared.run_on_chain(writer.qube, writer.refresh_sizes)
        open_segments = {
            qube: w.chain.seq
            for qube, w in self.server.writers.items()
            if w.chain is not None and w.chain.is_open
        }
        loop = asyncio.get_running_loop()
        scanned: dict[str, Cost] = {}
        plan = await loop.run_in_executor(
            None,
            functools.partial(
                plan_deletions,
                self.store.layout,
                retention,
                self.shared.age_clock(),
                open_segments,
                usage_out=scanned,
                cache=self.shared.scan_cache,
            ),
        )
        for planned in plan:
            qube, seq = planned
            delete = functools.partial(self._delete, planned)
            await self.shared.run_on_chain(qube, delete)
        for qube in {q for q, _ in plan}:
            current = self.server.writers.get(qube)
            if current is not None:
                await self.shared.run_on_chain(qube, current.refresh_sizes)
        await self._retire(sorted({q for q, _ in plan} | self._unretired))
        self._resync(scanned)

    async def _retire(self, qubes: list[str]) -> None:
        """Remove the directories of qubes whose segments are all deleted (format 2),
        each with a sealed retire line (store/retired.py), once the witness has been
        sent the qube's last deletion (which the retire line holds)."""
        if self.store.epochs is None:
            return
        for qube in qubes:
            if self.sender is not None and f"{qube} deletion" in self.sender.queue:
                self._unretired.add(qube)  # its last deletion reaches the witness first
                continue
            if qube not in self.server.writers:
                await self.shared.run_on_chain(qube, functools.partial(self._retire_one, qube))
            lock = self.shared.locks.get(qube)
            if qube not in self.server.writers and lock is not None and not lock.locked():
                del self.shared.locks[qube]  # memory: a store may see many names
                self.shared.clocks.pop(qube, None)

    def _retire_one(self, qube: str) -> None:
        """Retire ``qube`` (chain thread); kept for the next pass when it must wait."""
        self._unretired.discard(qube)
        if qube in self.server.writers:  # connected meanwhile
            return
        self.shared.scan_cache.touch(qube)
        try:
            line = self.store.retire(qube)
        except (LogvmError, OSError) as err:
            log.warning("%s: directory not retired: %s", qube, err)
            return
        if line is not None:
            log.info("%s: retired (every segment deleted; directory removed)", qube)
        elif retirable(self.store.layout, qube):
            self._unretired.add(qube)  # deleted in this epoch: retired in a later one

    def _delete(self, planned: Planned) -> None:
        """Delete one planned segment if it is still the qube's oldest closed one."""
        (qube, seq), reason, keys = planned, planned.reason, self.store.keys
        self.shared.scan_cache.touch(qube)
        chain = self.store.chain(qube)
        segments = self.store.layout.segments(qube)
        if not segments or segments[0].seq != seq or (chain.is_open and chain.seq == seq):
            return
        if chain.delete_oldest(keys, keep_newest=0, reason=reason) == seq:
            log.info("%s: deleted segment %d (%s)", qube, seq, reason)
            if reason == "quota":  # for the witness: what the qube cost when planned
                cost = CostLine(qube, keys.epoch, seq, planned.cost.disk, planned.cost.plain)
                self._on_seal(cost.signed(keys.key))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="logvm-collector",
        description="Store the logs other qubes send over qrexec (logvm.Send).",
        epilog="Example: logvm-collector -v   (as the unit logvm-collector.service runs it)",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        default=DEFAULT_SOCKET,
        help=f"listening socket, unless systemd passes one (default {DEFAULT_SOCKET})",
    )
    add_store_argument(parser)
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        help="configuration file; repeat to merge several, later ones win "
        "(default: /etc/qubes-logvm/collector.yaml merged with /rw/config/qubes-logvm/)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections too")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def first_start(store_root: Path, config: CollectorConfig) -> bool:
    """Create the sealing state on a qube's first start, when a witness will hold the key.

    With a witness configured, the verification key never needs to be shown
    in the LogVM: it is queued for the witness (the sender delivers it first
    and then erases it), and the admin exports it from there
    (``logvm-witness export-key LOGVM``). Without a witness the admin must run
    ``logvm setup-keys`` and keep the key it prints, so nothing is created.
    Returns True when it created the sealing state.
    """
    layout = StoreLayout(store_root)
    witness = config.witness
    if layout.store_json.exists() or (witness.target is None and not witness.command):
        return False
    queue_registration(store_root, setup_keys(layout))
    log.warning(
        "created the sealing state in %s; the verification key goes to the witness "
        "(%s) and is then erased here: export it there with `logvm-witness export-key`",
        store_root,
        witness.target or "custom command",
    )
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``logvm-collector``."""
    args = _parse_args(argv)
    setup_logging(
        logging.INFO if args.verbose else logging.WARNING, "%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_collector_config(*args.config)
        first_start(args.store, config)
        daemon = Daemon(args.store, config, args.config)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, daemon.stop_early)  # until run() takes them over
        sock = _listening_socket(args.socket, config)
        fail_point("listening")
        asyncio.run(daemon.run(sock))
    except LogvmError as err:
        return fatal("logvm-collector", f"error: {err}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
