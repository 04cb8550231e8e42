"""Hash chain, forward-secure keys and seal lines (floor 1).

All the cryptography of the store, with domain separation, as specified in
docs/store-format.md:

- chain: ``head' = SHA-256("logvm-chain-v1\\0" || head || bytes)`` over the
  exact stored bytes between two seals; the first head of a qube is
  ``SHA-256("logvm-genesis-v1\\0" || store_id || "\\0" || qube)``;
- keys: ``K[e+1] = SHA-256("logvm-evolve-v1\\0" || K[e])``; ``K[0]`` is the
  verification key, kept outside the LogVM;
- seals: ``HMAC-SHA256(K[e], "logvm-seal-v1\\0" || body)``, where body is the
  seal line without its final `` <mac>`` field.

Trust side: pure functions; parsing is strict because seal files are read
back from a disk an intruder may have edited.
"""

import hashlib
import hmac
import re
from dataclasses import dataclass, replace
from typing import ClassVar, Self

from .errors import SealError
from .seal_line import seal_fields

CHAIN_DOMAIN = b"logvm-chain-v1\0"
GENESIS_DOMAIN = b"logvm-genesis-v1\0"
EVOLVE_DOMAIN = b"logvm-evolve-v1\0"
SEAL_DOMAIN = b"logvm-seal-v1\0"
STORE_ID_DOMAIN = b"logvm-store-id-v2\0"
HASH_LEN = 32
ZERO = bytes(HASH_LEN)

#: The seal kinds that end a segment: nothing may be sealed after them.
FINAL_KINDS = frozenset({"close", "recover"})

_STORE_ID = re.compile(r"[0-9a-f]{32}")
_VKEY = re.compile(r"logvm-vk1:([0-9a-f]{32}):([0-9a-f]{64})")


def genesis(store_id: str, qube: str) -> bytes:
    """The chain head before a qube's first record."""
    return hashlib.sha256(
        GENESIS_DOMAIN + store_id.encode("ascii") + b"\0" + qube.encode("ascii")
    ).digest()


def chain_step(head: bytes, data: bytes) -> bytes:
    """Advance a chain head over the stored bytes of one sealed interval."""
    hasher = ChainHasher(head)
    hasher.update(data)
    return hasher.digest()


class ChainHasher:
    """Streaming form of :func:`chain_step`, for intervals read in pieces."""

    def __init__(self, head: bytes) -> None:
        self._hash = hashlib.sha256(CHAIN_DOMAIN + head)

    def update(self, data: bytes) -> None:
        """Feed the next stored bytes of the interval."""
        self._hash.update(data)

    def digest(self) -> bytes:
        """The new head."""
        return self._hash.digest()


def evolve(key: bytes) -> bytes:
    """The next epoch's key; one way, so an old key cannot be recomputed."""
    return hashlib.sha256(EVOLVE_DOMAIN + key).digest()


@dataclass(frozen=True)
class KeyLadder:
    """What :class:`EpochKeys` holds, to keep it across processes (the witness).

    ``marks[i]`` is ``K[i * stride]`` for every multiple up to ``top_epoch``;
    ``recent`` the keys of up to :attr:`EpochKeys.RECENT` epochs below it.
    """

    stride: int
    marks: tuple[bytes, ...]
    top_epoch: int
    top_key: bytes
    recent: tuple[tuple[int, bytes], ...]


class EpochKeys:
    """``K[epoch]`` from ``K[0]``: the one key derivation of every verifier.

    Any epoch, in any order, with bounded work per lookup after the first walk.

    Keys are remembered every ``stride`` epochs (:attr:`STRIDE` unless given; a
    verifier, with no bound on what it holds, :attr:`FINE_STRIDE`), and
    the :attr:`RECENT` epochs below the highest one reached, so a lookup
    below the top costs at most stride-1 hashes; :meth:`cost` says what a
    lookup would cost before paying it (the witness budgets hashing, since a
    compromised LogVM chooses the epochs it sends). With ``max_keys`` (the
    witness) no more keys than that are held whatever epochs are asked for:
    past it the stride doubles and every other mark is dropped. With ``keep``
    (a verifier: :meth:`for_verifier`) the keys of up to that many epochs
    below the top are held as well, every one its walks to the top passed,
    so a verifier's lookups below the top after its first walk cost nothing.
    """

    STRIDE = 1024
    #: A verifier's stride (``stride=``): it holds no more than 32 bytes per 64
    #: epochs, and each qube's first lookup below the top costs at most 63 hashes.
    FINE_STRIDE = 64
    RECENT = 16
    #: Epochs below the top whose keys a verifier holds (``keep=``): 2 MiB of
    #: keys (4.5 MiB as Python objects), a week of 10 s epochs.
    VERIFIER_KEEP = 1 << 16

    def __init__(
        self, key0: bytes, *, max_keys: int | None = None, stride: int = STRIDE, keep: int = 0
    ) -> None:
        if max_keys is not None and max_keys < self.RECENT + 3:
            raise ValueError(f"max_keys must be at least {self.RECENT + 3}")
        if stride < 1:
            raise ValueError("stride must be at least 1")
        self._max_marks = None if max_keys is None else max_keys - self.RECENT - 1
        self._stride = stride
        self._marks: list[bytes] = [key0]  # _marks[i] is K[i * stride]
        self._recent: dict[int, bytes] = {}
        self._top_epoch = 0
        self._top_key = key0
        self._last: tuple[int, bytes] = (0, key0)  # the previous lookup below the top
        self._keep = keep
        self._kept: list[bytes] = []  # _kept[i] is K[_kept_from + i], up to the top
        self._kept_from = 0
        #: Hashes computed so far (the witness counts what it spent).
        self.hashes = 0

    @property
    def held(self) -> int:
        """Keys held now (marks, recent, kept and the top)."""
        return len(self._marks) + len(self._recent) + len(self._kept) + 1

    @classmethod
    def for_verifier(cls, key0: bytes) -> "EpochKeys":
        """The keys of a verifier: no bound but its size (fine marks, kept keys)."""
        return cls(key0, stride=cls.FINE_STRIDE, keep=cls.VERIFIER_KEEP)

    def cost(self, epoch: int) -> int:
        """Hashes :meth:`key` would compute for ``epoch``."""
        if epoch >= self._top_epoch:
            return epoch - self._top_epoch
        if epoch in self._recent or (self._keep and epoch >= self._kept_from):
            return 0
        return epoch - self._below(epoch)[0]

    def _below(self, epoch: int) -> tuple[int, bytes]:
        """Where a lookup below the top starts: the previous lookup when it lies
        between the mark below and the epoch (a verifier reading seals in order
        pays one hash per epoch, however far apart they are), else the mark."""
        at, key = self._last
        mark = epoch - epoch % self._stride
        if mark <= at <= epoch:
            return at, key
        return mark, self._marks[epoch // self._stride]

    def key(self, epoch: int) -> bytes:
        """``K[epoch]``."""
        if epoch < self._top_epoch:
            if self._keep and epoch >= self._kept_from:
                return self._kept[epoch - self._kept_from]
            known = self._recent.get(epoch)
            if known is not None:
                return known
            at, key = self._below(epoch)
            self.hashes += epoch - at
            while at < epoch:
                key, at = evolve(key), at + 1
            self._last = (epoch, key)
            return key
        key, at = self._top_key, self._top_epoch
        self.hashes += epoch - at
        keep, kept = self._keep, self._kept
        if epoch - at > keep:  # the kept keys start afresh (none, without keep)
            kept.clear()
            self._kept_from = epoch - keep
        while at < epoch:
            if epoch - at <= self.RECENT:
                self._recent[at] = key
            if keep and at >= self._kept_from:
                kept.append(key)
            key = evolve(key)
            at += 1
            if at % self._stride == 0:
                self._add_mark(key)
        self._top_epoch, self._top_key = at, key
        if len(kept) > keep:
            del kept[: len(kept) - keep]
            self._kept_from = at - keep
        for old in [e for e in self._recent if e < at - self.RECENT]:
            del self._recent[old]
        return key

    def _add_mark(self, key: bytes) -> None:
        self._marks.append(key)
        if self._max_marks is not None and len(self._marks) > self._max_marks:
            # Invariant kept: marks[i] = K[i * stride] for every multiple up to the top.
            self._marks = self._marks[::2]
            self._stride *= 2

    def ladder(self) -> KeyLadder:
        """What is held, to :meth:`resume` from in another process."""
        return KeyLadder(
            self._stride,
            tuple(self._marks),
            self._top_epoch,
            self._top_key,
            tuple(sorted(self._recent.items())),
        )

    @classmethod
    def resume(cls, key0: bytes, ladder: KeyLadder, *, max_keys: int | None) -> "EpochKeys":
        """Keys as another process left them; ValueError if the ladder cannot be K[0]'s."""
        keys = cls(key0, max_keys=max_keys)
        stride = ladder.stride
        consistent = (
            stride >= cls.STRIDE
            and stride % cls.STRIDE == 0
            and (stride // cls.STRIDE) & (stride // cls.STRIDE - 1) == 0
            and ladder.marks[:1] == (key0,)
            and len(ladder.marks) == ladder.top_epoch // stride + 1
            and (keys._max_marks is None or len(ladder.marks) <= keys._max_marks)
            and len(ladder.recent) <= cls.RECENT
            and all(0 < ladder.top_epoch - e <= cls.RECENT for e, _ in ladder.recent)
        )
        if not consistent:
            raise ValueError("the kept keys do not fit K[0]")
        keys._stride = stride
        keys._marks = list(ladder.marks)
        keys._top_epoch, keys._top_key = ladder.top_epoch, ladder.top_key
        keys._recent = dict(ladder.recent)
        keys._kept_from = ladder.top_epoch
        return keys


class MacLine:
    """A sealed text line: ``<body> <mac>``, mac = HMAC-SHA256(key, domain || body).

    The shape of seal lines and of format 2's epoch lines; a subclass (a
    frozen dataclass with a ``mac`` field) gives its :attr:`DOMAIN` and
    :meth:`body`.
    """

    DOMAIN: ClassVar[bytes]
    mac: bytes

    def body(self) -> bytes:
        """The MACed part: the line without its final field."""
        raise NotImplementedError

    def to_line(self) -> bytes:
        """The line as stored, newline included."""
        return self.body() + b" " + self.mac.hex().encode("ascii") + b"\n"

    def signed(self, key: bytes) -> Self:
        """This line with its MAC computed under ``key``."""
        return replace(self, mac=line_mac(self.DOMAIN, key, self.body()))  # type: ignore[type-var]

    def mac_ok(self, key: bytes) -> bool:
        """Constant-time check of the MAC under ``key``."""
        return hmac.compare_digest(self.mac, line_mac(self.DOMAIN, key, self.body()))


def line_mac(domain: bytes, key: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of a line's body under an epoch key, in ``domain``."""
    return hmac.digest(key, domain + body, "sha256")


@dataclass(frozen=True)
class Seal(MacLine):
    """One line of a ``.seal`` file (or of a qube's tombstone file).

    ``lines``/``nbytes`` count the records/bytes of the segment covered so far
    (for ``tomb``: the deleted segment's totals); ``head`` is the chain head
    after them; ``prev`` is the MAC of the previous line of the same file
    (zeros for the first).
    """

    DOMAIN: ClassVar[bytes] = SEAL_DOMAIN
    kind: str
    qube: str
    seq: int
    epoch: int
    lines: int
    nbytes: int
    head: bytes
    prev: bytes
    mac: bytes = ZERO

    def body(self) -> bytes:
        """The MACed part: the line without its final field."""
        return (
            f"v1 {self.kind} {self.qube} {self.seq} {self.epoch} {self.lines} {self.nbytes} "
            f"{self.head.hex()} {self.prev.hex()}"
        ).encode("ascii")

    @property
    def is_final(self) -> bool:
        """True for a seal that ends its segment (:data:`FINAL_KINDS`)."""
        return self.kind in FINAL_KINDS


def seal_mac(key: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of a seal body under an epoch key."""
    return line_mac(SEAL_DOMAIN, key, body)


def parse_seal(line: bytes) -> Seal:
    """Parse one seal line (without newline); raise StoreError if malformed."""
    g = seal_fields(line)
    return Seal(
        kind=g[0],
        qube=g[1],
        seq=int(g[2]),
        epoch=int(g[3]),
        lines=int(g[4]),
        nbytes=int(g[5]),
        head=bytes.fromhex(g[6]),
        prev=bytes.fromhex(g[7]),
        mac=bytes.fromhex(g[8]),
    )


def format_verification_key(store_id: str, key0: bytes) -> str:
    """The text an admin keeps: ``logvm-vk1:<store id>:<K[0] hex>``."""
    return f"logvm-vk1:{store_id}:{key0.hex()}"


def parse_verification_key(text: str) -> tuple[str, bytes]:
    """Inverse of :func:`format_verification_key`; returns (store id, K[0])."""
    match = _VKEY.fullmatch(text.strip())
    if match is None:
        raise SealError("not a verification key (expected logvm-vk1:<store id>:<64 hex>)")
    return match.group(1), bytes.fromhex(match.group(2))


def format2_store_id(key0: bytes) -> str:
    """The id of a store made in format 2: derived from ``K[0]`` (one way).

    So the verification key itself says the store is of format 2, and an
    intruder who edits store.json to format 1 (whose rules see less) is
    caught; a format-1 store's random id matches with chance 2^-128.
    """
    return hashlib.sha256(STORE_ID_DOMAIN + key0).hexdigest()[:32]


def valid_store_id(text: str) -> bool:
    """Store ids are 128 random bits in lowercase hex."""
    return _STORE_ID.fullmatch(text) is not None
