"""Qube names and the qrexec service descriptor (floor 1).

Trust side: the descriptor is written by qrexec (dom0 vouches for the source
name), but it arrives on the same socket as the sender's data, so it is parsed
strictly: anything unexpected is refused, never repaired.
"""

import re

from .errors import InvalidQubeName, ProtocolError

#: Qubes' rule (qubes-core-admin ``validate_name``): a letter, then letters,
#: digits, ``_``, ``.``, ``-``; at most 31 characters.
_QUBE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,30}")
_DISPVM_NAME = re.compile(r"disp[0-9]{1,4}")

SEND_SERVICE = "logvm.Send"
#: The one source that may deliver another qube's logs (``logvm.Send+for.X``).
ADMIN_QUBE = "dom0"
#: Service argument prefix of dom0's deliveries: ``logvm.Send+for.<qube>``.
DELIVERY_PREFIX = "for."
WITNESS_SERVICE = "logvm.Witness"

#: The longest descriptor we accept: service (+argument) and source name.
MAX_DESCRIPTOR_BYTES = 256


def validate_qube_name(untrusted_name: str) -> str:
    """Return the name if it is a valid qube name; raise otherwise."""
    if not _QUBE_NAME.fullmatch(untrusted_name):
        raise InvalidQubeName(f"invalid qube name {untrusted_name!r:.80}")
    return untrusted_name


def is_dispvm_name(name: str) -> bool:
    """True for names of the ``dispN`` form that Qubes gives DispVMs."""
    return _DISPVM_NAME.fullmatch(name) is not None


def parse_service_descriptor(untrusted_descriptor: bytes, service: str = SEND_SERVICE) -> str:
    """Parse ``"<service>[+arg] <source>[ <target_type> <target>]"`` (NUL stripped).

    A qube receives ``service source``; dom0 receives the longer form with
    the target. Returns the validated source qube name.
    """
    if len(untrusted_descriptor) > MAX_DESCRIPTOR_BYTES:
        raise ProtocolError("service descriptor too long")
    try:
        untrusted_text = untrusted_descriptor.decode("ascii")
    except UnicodeDecodeError as err:
        raise ProtocolError("service descriptor is not ASCII") from err
    untrusted_parts = untrusted_text.split(" ")
    if len(untrusted_parts) not in (2, 4):
        raise ProtocolError("malformed service descriptor")
    untrusted_service = untrusted_parts[0]
    if untrusted_service != service and not untrusted_service.startswith(service + "+"):
        raise ProtocolError(f"descriptor names another service: {untrusted_service!r:.80}")
    return validate_qube_name(untrusted_parts[1])


def parse_send_call(untrusted_descriptor: bytes) -> tuple[str, str]:
    """Parse a ``logvm.Send`` descriptor into (source, argument); ``""`` for none.

    Current qrexec writes ``logvm.Send+ work`` for a call without argument,
    older ``logvm.Send work``: both mean no argument.
    """
    source = parse_service_descriptor(untrusted_descriptor)
    untrusted_service = untrusted_descriptor.split(b" ", 1)[0].decode("ascii")
    return source, untrusted_service.partition("+")[2]


def delivery_chain(source: str, untrusted_argument: str) -> tuple[str, bool]:
    """The chain a ``logvm.Send`` call writes to, and whether dom0 delivers it.

    No argument: the caller's own chain. ``for.<qube>``: only from dom0 (the
    qrexec-vouched source), into ``<qube>``'s chain, marked as dom0's
    delivery (docs/store-format.md, "Deliveries by dom0"). Anything else is
    refused, so no qube can write into another's chain or pose as dom0.
    """
    if not untrusted_argument:
        return source, False
    if source != ADMIN_QUBE:
        raise ProtocolError(f"{source}: only dom0 may call logvm.Send with an argument")
    if not untrusted_argument.startswith(DELIVERY_PREFIX):
        raise ProtocolError(f"unknown logvm.Send argument {untrusted_argument!r:.80}")
    qube = validate_qube_name(untrusted_argument[len(DELIVERY_PREFIX) :])
    if qube == ADMIN_QUBE:
        raise ProtocolError("dom0 sends its own logs without an argument")
    return qube, True
