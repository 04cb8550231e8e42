"""An attacker with full control of the LogVM after some records were checkpointed.

Each attack is made on a real store (written by the store writer), against a
real witness process, and must be found by :func:`check_witness` with the
witness's exported checkpoints and key; the untouched store (with legitimate
rotation) passes.
"""

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from witness.conftest import LOGVM, WITNESS, WitnessCall

from qubes_logvm.core.errors import StoreError
from qubes_logvm.core.records import format_timestamp, line_record
from qubes_logvm.core.seal import Seal, parse_verification_key
from qubes_logvm.core.witness_format import CostLine
from qubes_logvm.store.keystate import setup_keys
from qubes_logvm.store.layout import StoreLayout
from qubes_logvm.store.sealfile import read_seal_file
from qubes_logvm.store.tombstones import read_tomb_file
from qubes_logvm.store.verify import Finding, verify_store
from qubes_logvm.store.writer import Store
from support.programs import program
from support.segments import numbered

pytestmark = pytest.mark.timeout(60)
Open = Callable[..., WitnessCall]
LOGVM_CLI = program("logvm")


def witness_errors(root: Path, export: Path, key: str) -> list[Finding]:
    """The errors verification finds against the witness's records."""
    report = verify_store(root, key, witness=export)
    return [f for f in report.errors if f.message.startswith("witness: ")]


def records(n: int, tag: str) -> bytes:
    return numbered(n, tag.encode() + b" record %d")


class Scene:
    """A store being written, a witness receiving its checkpoints, and an attacker."""

    def __init__(self, tmp_path: Path, open_call: Open) -> None:
        self.root = tmp_path / "store"
        self.witness_dir = tmp_path / "witness"
        self.tmp = tmp_path
        self.vk = setup_keys(StoreLayout(self.root), epoch_seconds=1)
        self.seals: list[Seal] = []
        self.store = Store(self.root, on_seal=self.seals.append)
        self.open_call = open_call
        store_id, key0 = parse_verification_key(self.vk)
        call = open_call()
        # As queue_registration writes it: with the store's epoch length.
        assert call.send(f"register {store_id} {key0.hex()} 1".encode()) == "ok registered"
        call.close()

    def write(self, qube: str, n: int, tag: str = "honest") -> Seal:
        chain = self.store.chain(qube)
        if not chain.is_open:
            chain.open_segment(self.store.keys, session="s")
        chain.append(records(n, tag), n)
        return chain.seal(self.store.keys)

    def checkpoint(self) -> None:
        """What the sender does: the newest seal of each qube, over one call."""
        newest = {seal.qube: seal for seal in self.seals}
        call = self.open_call()
        for seal in newest.values():
            assert call.send(seal.to_line().rstrip(b"\n")) in ("ok stored", "ok seen")
        call.close()

    def verify(self) -> list[Finding]:
        """The witness part of verification; also runs ``logvm verify --witness``."""
        export = self.tmp / "witness.export"
        self.run_admin("export", LOGVM, "-o", str(export))
        key = self.run_admin("export-key", LOGVM).strip()
        problems = witness_errors(self.root, export, key)
        key_file = self.tmp / "vk"
        key_file.write_text(key + "\n")
        done = subprocess.run(
            [
                str(LOGVM_CLI),
                "verify",
                "--store",
                str(self.root),
                "--witness",
                str(export),
                "--key",
                str(key_file),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.cli_output = done.stdout + done.stderr
        assert done.returncode == (1 if problems else 0), self.cli_output
        return problems

    def run_admin(self, *args: str) -> str:
        policies = self.tmp / "policy"  # what Salt deployed (none unless a test writes it)
        done = subprocess.run(
            [str(WITNESS), "--dir", str(self.witness_dir), "--policy-dir", str(policies), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def seal_file(self, qube: str, seq: int = 1) -> Path:
        return StoreLayout(self.root).segment_seal(qube, seq)

    def log_file(self, qube: str, seq: int = 1) -> Path:
        return StoreLayout(self.root).segment_log(qube, seq)


@pytest.fixture
def scene(tmp_path: Path, open_call: Open) -> Scene:
    scene = Scene(tmp_path, open_call)
    scene.write("work", 3)
    scene.write("work", 3)
    scene.write("disp7", 4)
    scene.checkpoint()
    scene.store.tick()  # the attacker arrives in a later epoch
    return scene


def cut_to(scene: Scene, qube: str, keep: int) -> Seal:
    """Truncate a segment back to its ``keep``-th seal; return that seal."""
    seals = read_seal_file(scene.seal_file(qube)).seals
    kept = seals[:keep]
    scene.seal_file(qube).write_bytes(b"".join(s.to_line() for s in kept))
    with open(scene.log_file(qube), "r+b") as f:
        f.truncate(kept[-1].nbytes)
    return kept[-1]


def reseal(scene: Scene, qube: str, last: Seal, new_bytes: bytes, kind: str) -> None:
    """Append records and a seal made with the key the attacker holds now."""
    from qubes_logvm.core.seal import ChainHasher

    hasher = ChainHasher(last.head)
    hasher.update(new_bytes)
    with open(scene.log_file(qube), "ab") as f:
        f.write(new_bytes)
    keys = scene.store.keys
    seal = Seal(
        kind,
        qube,
        last.seq,
        keys.epoch,
        last.lines + new_bytes.count(b"\n"),
        last.nbytes + len(new_bytes),
        hasher.digest(),
        last.mac,
    ).signed(keys.key)
    with open(scene.seal_file(qube), "ab") as f:
        f.write(seal.to_line())


def test_untouched_store_passes_with_rotation(scene: Scene) -> None:
    chain = scene.store.chain("work")
    chain.close(scene.store.keys)
    scene.write("work", 2)  # a second segment
    chain.close(scene.store.keys)
    scene.write("work", 2)  # a third, open
    scene.checkpoint()
    assert scene.store.chain("work").delete_oldest(scene.store.keys) == 1  # rotation
    scene.store.tick()
    scene.checkpoint()
    assert scene.verify() == []


def test_truncated_tail_resealed_with_current_key(scene: Scene) -> None:
    last = cut_to(scene, "work", 2)  # open + first batch: the second batch is gone
    reseal(scene, "work", last, b"", "close")
    [problem] = scene.verify()
    assert (problem.qube, problem.segment) == ("work", 1)
    assert "truncated" in str(problem) or "missing" in str(problem)


def test_whole_qube_deleted(scene: Scene) -> None:
    scene.store.close()
    shutil.rmtree(StoreLayout(scene.root).qube_dir("disp7"))
    [problem] = scene.verify()
    assert problem.qube == "disp7"
    assert "deleted" in problem.message


def test_rolled_back_to_older_copy(scene: Scene) -> None:
    scene.store.close()
    copy = scene.tmp / "old-copy"
    shutil.copytree(scene.root, copy)
    scene.store = Store(scene.root, on_seal=scene.seals.append)
    scene.write("work", 5)
    scene.checkpoint()
    scene.store.close()
    shutil.rmtree(scene.root)
    shutil.copytree(copy, scene.root)
    [problem] = scene.verify()
    assert (problem.qube, problem.segment) == ("work", 2)
    assert "rolled back" in problem.message


def test_forked_chain(scene: Scene) -> None:
    last = cut_to(scene, "work", 2)
    # Same number of records as the checkpointed batch, other content.
    reseal(scene, "work", last, records(3, "forged"), "batch")
    [problem] = scene.verify()
    assert (problem.qube, problem.segment) == ("work", 1)
    assert "forks" in problem.message
    assert "checkpoint at record 7" in problem.message


def test_fake_tombstone_hiding_records(scene: Scene) -> None:
    layout = StoreLayout(scene.root)
    last = read_seal_file(scene.seal_file("disp7")).seals[1]
    keys = scene.store.keys
    tomb = Seal("tomb", "disp7", 1, keys.epoch, 1, 10, last.head, bytes(32)).signed(keys.key)
    scene.store.close()
    layout.tombstones("disp7").write_bytes(tomb.to_line())
    scene.seal_file("disp7").unlink()
    scene.log_file("disp7").unlink()
    [problem] = scene.verify()
    assert problem.qube == "disp7"
    assert "tombstone" in problem.message


def test_verification_key_replaced_at_the_witness(scene: Scene, open_call: Open) -> None:
    # The attacker makes a whole new store with a key of its own...
    scene.store.close()
    shutil.rmtree(scene.root)
    fake_vk = setup_keys(StoreLayout(scene.root), epoch_seconds=1)
    fake = Store(scene.root)
    chain = fake.chain("work")
    chain.open_segment(fake.keys)
    chain.append(records(6, "forged"), 6)
    chain.seal(fake.keys)
    fake.close()
    # ...and tries to make the witness trust that key instead.
    store_id, key0 = parse_verification_key(fake_vk)
    call = open_call()
    assert call.send(f"register {store_id} {key0.hex()}".encode()) == "err key-mismatch"
    call.close()
    assert "WARNING: a different key was offered" in scene.run_admin("list")
    problems = scene.verify()
    assert {p.qube for p in problems} >= {"work", "disp7"}
    assert "the store was replaced by another one" in scene.cli_output


def test_tampered_witness_file(scene: Scene) -> None:
    export = scene.tmp / "witness.export"
    scene.run_admin("export", LOGVM, "-o", str(export))
    key = scene.run_admin("export-key", LOGVM).strip()
    lines = export.read_bytes().split(b"\n")
    # Someone on the way lowers a checkpoint's record count.
    fields = lines[-2].split(b" ")
    fields[7] = b"%d" % (int(fields[7]) - 1)  # cp <time> v1 <kind> <qube> <seq> <epoch> <lines>
    lines[-2] = b" ".join(fields)
    export.write_bytes(b"\n".join(lines))
    problems = witness_errors(scene.root, export, key)
    assert any("not sealed with this key" in p.message for p in problems)
    export.write_bytes(b"not an export\n")
    with pytest.raises(StoreError):
        verify_store(scene.root, key, witness=export)


def test_records_appended_later_with_earlier_receive_times(scene: Scene) -> None:
    # After the break-in the intruder adds records dated a day before the witness's
    # newest checkpoint (sealed with the key it holds now): backdated.
    last = read_seal_file(scene.seal_file("work")).seals[-1]
    stamp = format_timestamp(time.time() - 86400)
    reseal(scene, "work", last, line_record(stamp, b"sshd[1]: Accepted publickey"), "batch")
    [problem] = scene.verify()
    assert (problem.qube, problem.segment, problem.first_line) == ("work", 1, last.lines + 1)
    assert "backdated" in problem.message and stamp.decode() in problem.message
    assert "backdated" in scene.cli_output


def test_verify_prints_each_segments_epochs_and_dom0_time(scene: Scene) -> None:
    # disp7 was sealed in the first epoch only; work goes on in the next one.
    scene.write("work", 2)
    scene.checkpoint()
    assert scene.verify() == []
    lines = scene.cli_output.splitlines()
    [disp7] = [line for line in lines if "disp7/00000001" in line and "epochs" in line]
    assert re.search(r"epochs (\d+)-\1, sealed before dom0 time 20\d\d-\S+Z", disp7), disp7
    [work] = [line for line in lines if "work/00000001" in line and "epochs" in line]
    assert "sealed after the witness's last record" in work


def _delete_and_report(scene: Scene, reason: str, seq: int = 1) -> None:
    """The collector deletes work's oldest segment (``seq``) and reports it to the witness."""
    keys = scene.store.keys
    scene.store.chain("work").close(keys)
    scene.write("work", 2)
    assert scene.store.chain("work").delete_oldest(keys, keep_newest=0, reason=reason) == seq
    tomb = read_tomb_file(StoreLayout(scene.root).tombstones("work")).tombs[-1][1]
    scene.checkpoint()
    call = scene.open_call()
    assert call.send(tomb.to_line().rstrip(b"\n")) == "ok stored"
    call.close()


def _deploy(scene: Scene, collector: dict[str, object]) -> None:
    """What the Salt formula writes for the witness: the collector section of the pillar."""
    (scene.tmp / "policy").mkdir(exist_ok=True)
    (scene.tmp / "policy" / f"{LOGVM}.json").write_text(json.dumps(collector))


def test_age_deletion_the_deployed_policy_would_not_make(scene: Scene) -> None:
    # dom0 deployed a 30-day max_age; the intruder lowered it in the LogVM's
    # /rw/config and sent SIGHUP: the collector deleted a fresh segment "for age".
    _deploy(scene, {"retention": {"max_age": {"default": "30d"}}})
    _delete_and_report(scene, "age")
    [problem] = scene.verify()
    assert (problem.qube, problem.segment) == ("work", 1)
    assert "deleted for age" in problem.message
    assert "the deployed max_age is 2592000 s" in problem.message
    assert "a deletion dom0's policy would not make" in scene.cli_output


def test_age_deletion_when_the_deployed_policy_keeps_everything(scene: Scene) -> None:
    _deploy(scene, {"quota": {"default": "1G"}})  # no max_age: kept until the quota needs room
    _delete_and_report(scene, "age")
    [problem] = scene.verify()
    assert "keeps this qube's segments until the quota needs room" in problem.message


def _cost_note(scene: Scene, seq: int, disk: int) -> None:
    """What the collector sends with a quota deletion: what the qube counted."""
    keys = scene.store.keys
    note = CostLine("work", keys.epoch, seq, disk, disk).signed(keys.key)
    call = scene.open_call()
    assert call.send(note.to_line().rstrip(b"\n")) == "ok stored"
    call.close()


def test_quota_deletion_is_shown_not_judged(scene: Scene) -> None:
    # A LogVM that never sent a cost note (an older collector): a printed limit.
    _deploy(scene, {"retention": {"max_age": {"default": "30d"}}})
    _delete_and_report(scene, "quota")
    assert scene.verify() == []
    assert "quota deletions made before the witness heard the LogVM's first cost note" in (
        scene.cli_output
    )


def test_quota_deletion_within_the_deployed_quota(scene: Scene) -> None:
    # The collector counted 40K when it deleted "for quota"; dom0 deployed 1G.
    _deploy(scene, {"quota": {"default": "1G"}})
    _delete_and_report(scene, "quota")
    _cost_note(scene, 1, 40 << 10)
    [problem] = scene.verify()
    assert (problem.qube, problem.segment) == ("work", 1)
    assert "deleted for quota" in problem.message
    assert "the qube counted 40.0 KiB" in problem.message
    assert "within the deployed quota of 1.0 GiB" in problem.message
    assert "a deletion dom0's policy would not make" in scene.cli_output


def test_quota_deletion_over_the_deployed_quota_passes(scene: Scene) -> None:
    _deploy(scene, {"quota": {"default": "64M"}})
    _delete_and_report(scene, "quota")
    _cost_note(scene, 1, 65 << 20)
    assert scene.verify() == []


def test_quota_deletion_without_a_cost_note(scene: Scene) -> None:
    # The LogVM sent cost notes before (segment 1); segment 2's quota deletion
    # came without one, and the witness heard from the LogVM epochs later.
    _deploy(scene, {"quota": {"default": "64M"}})
    _delete_and_report(scene, "quota")
    _cost_note(scene, 1, 65 << 20)
    scene.store.tick()
    _delete_and_report(scene, "quota", seq=2)
    for _ in range(2):
        scene.store.tick()
    scene.write("work", 1)
    scene.checkpoint()
    [problem] = scene.verify()
    assert (problem.qube, problem.segment) == ("work", 2)
    assert "the witness heard no cost note for it" in problem.message


def test_store_json_epoch_length_edited(scene: Scene) -> None:
    # Longer epochs on paper make every segment look older (age deletions pass).
    data = json.loads((scene.root / "store.json").read_text())
    data["epoch_seconds"] = 86400
    (scene.root / "store.json").write_text(json.dumps(data))
    problems = scene.verify()
    assert any("store.json was edited" in p.message for p in problems), problems


def _retire_over_two_epochs(scene: Scene, reason: str) -> None:
    """An intruder who keeps the key for two epochs: in E deletes every segment of
    work (tombs of E, each reported as the collector would), in E+1 retires it
    (the retirement's tomb is then sealed before it) and reports that too."""
    keys, chain = scene.store.keys, scene.store.chain("work")
    chain.close(keys)
    assert chain.delete_oldest(keys, keep_newest=0, reason=reason) == 1
    tomb = read_tomb_file(StoreLayout(scene.root).tombstones("work")).tombs[-1][1]
    scene.store.tick()
    retire = scene.store.retire("work")
    assert retire is not None and retire.tomb == tomb
    assert not StoreLayout(scene.root).qube_dir("work").exists()
    call = scene.open_call()
    for line in (tomb, retire):
        assert call.send(line.to_line().rstrip(b"\n")) == "ok stored"
    call.close()
    scene.write("disp7", 1)  # the LogVM goes on checkpointing
    scene.checkpoint()


def test_retirement_with_two_epochs_of_key_judged_by_the_deployed_policy(scene: Scene) -> None:
    # Sealed in order and heard by the witness, deletion and retirement are what
    # an honest collector sends; dom0's policy (30 days) would not have deleted
    # work's fresh segment.
    _deploy(scene, {"retention": {"max_age": {"default": "30d"}}})
    _retire_over_two_epochs(scene, "age")
    [problem] = scene.verify()
    assert (problem.qube, problem.segment) == ("work", 1)
    assert "deleted for age" in problem.message
    assert "a deletion dom0's policy would not make" in scene.cli_output


def test_retirement_with_two_epochs_of_key_without_a_deployed_policy(scene: Scene) -> None:
    # No policy deployed to judge by: the limit verify prints; the deletion, its
    # epoch and the retirement are shown for the admin to judge.
    _retire_over_two_epochs(scene, "age")
    assert scene.verify() == []
    assert re.search(
        r"info: work: retired in epoch (\d+), every segment deleted, directory removed; the "
        r"last deletion: segment 1 deleted, reason age, 8 records, \d+ bytes, in epoch \d+ "
        r"\(before dom0 time 20\S+Z: the witness heard a later epoch then\)\n",
        scene.cli_output,
    ), scene.cli_output
    assert "limit: the witness holds no retention policy dom0 deployed" in scene.cli_output
    assert "1 deletion(s)" in scene.cli_output


def test_retirement_with_two_epochs_of_key_for_the_global_cap(scene: Scene) -> None:
    # The one reason no policy judges (the witness does not see the whole disk):
    # shown, with the limit printed, for the admin to judge.
    _deploy(scene, {"retention": {"max_age": {"default": "30d"}}})
    _retire_over_two_epochs(scene, "global")
    assert scene.verify() == []
    assert "the last deletion: segment 1 deleted, reason global, 8 records" in scene.cli_output
    assert "limit: global-cap deletions" in scene.cli_output


def test_deletions_are_printed_with_the_dom0_time_of_their_epoch(scene: Scene) -> None:
    # The witness heard a later epoch at some dom0 time: the deletion (an honest
    # quota one) was made before it. Without the witness: its epoch only.
    _delete_and_report(scene, "quota")
    scene.store.tick()
    scene.write("work", 1)
    scene.checkpoint()
    scene.verify()
    [line] = [n for n in scene.cli_output.splitlines() if "segment 1 deleted" in n]
    assert re.fullmatch(
        r"info: work/00000001: segment 1 deleted, reason quota, 8 records, \d+ bytes, in epoch "
        r"\d+ \(before dom0 time 20\d\d-\S+Z: the witness heard a later epoch then\)",
        line,
    ), line
    alone = verify_store(scene.root, scene.vk)
    [plain] = [str(f) for f in alone.findings if "segment 1 deleted" in f.message]
    assert plain.endswith(line.split(" (before dom0 time")[0].split(": ", 2)[2])
    assert "dom0 time" not in plain
