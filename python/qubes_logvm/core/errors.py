"""The project's error hierarchy (floor 1).

Entry points catch :class:`LogvmError`, print its message and exit non-zero;
nothing else is caught broadly.
"""


class LogvmError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(LogvmError):
    """A configuration file or value is wrong; the message names the key."""


class ProtocolError(LogvmError):
    """A peer sent something the protocol does not allow."""


class InvalidQubeName(ProtocolError):
    """A qube name (from qrexec) breaks Qubes' naming rules."""


class StoreError(LogvmError):
    """The store on disk is missing, unreadable or inconsistent."""


class SealError(StoreError):
    """Sealing state is missing or unusable (no key, wrong store id...)."""
