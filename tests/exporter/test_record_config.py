"""Record lines (format/parse round trip) and exporter.yaml validation."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qubes_logvm.core.errors import ConfigError
from qubes_logvm.core.sender_record import parse_sender_record
from qubes_logvm.exporter.config import parse_exporter_config
from qubes_logvm.exporter.record import TimeFormatter, format_record, format_records, token

pytestmark = pytest.mark.inprocess

texts = st.binary(max_size=200)


@given(texts, texts, texts, texts, st.one_of(st.none(), st.integers(0, 7)),
       st.one_of(st.none(), st.integers(0, 99999)))  # fmt: skip
def test_any_fields_make_one_line_that_parses_back(
    host: bytes, unit: bytes, ident: bytes, message: bytes, prio: int | None, pid: int | None
) -> None:
    stamp = TimeFormatter().format(1_795_885_200_123_456)
    line = format_record(stamp, token(host), prio, unit, ident, pid, message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    line.decode("utf-8")  # always valid UTF-8
    parsed = parse_sender_record(line[:-1])
    assert parsed.message == message
    assert parsed.pid == pid
    assert parsed.ident == (ident.decode("utf-8", "replace") if ident else "")
    assert parsed.time == stamp.decode()


@given(
    st.lists(st.binary(max_size=40) | st.sampled_from([b"\\", b"\xc3\xa9", b"\x1b[31m", b"a\rb"])),
    st.sampled_from(["console", "a b:[c]", "-", None]),
)
def test_records_of_one_source_equal_each_record_joined(
    messages: list[bytes], ident: str | None
) -> None:
    # the block path (one head, one escaping pass) and the per-line one agree,
    # also for messages holding a newline, control bytes, invalid UTF-8
    stamp, host = b"2026-01-01T00:00:00.000000+00:00", b"dom0"
    each = b"".join(format_record(stamp, host, None, None, ident, None, m) for m in messages)
    assert format_records(stamp, host, None, None, ident, None, messages) == each


def test_example_line() -> None:
    line = format_record(b"2026-11-28T18:05:26.123456+01:00", b"work", 6, "sshd.service",
                         "sshd", 812, b"Accepted\nkey")  # fmt: skip
    assert line == (
        b"2026-11-28T18:05:26.123456+01:00 work info sshd.service sshd[812]: Accepted\\x0akey\n"
    )


def test_config_defaults() -> None:
    config = parse_exporter_config({})
    assert config.qrexec_command == ("qrexec-client-vm", "@default", "logvm.Send")
    assert str(config.state_dir) == "/var/lib/qubes-logvm-exporter"
    assert config.journal.enabled and not config.syslog.enabled


def test_config_full() -> None:
    config = parse_exporter_config(
        {
            "batch": {"max_lines": 10, "max_delay": "200ms"},
            "sources": {
                "journal": {"min_priority": "notice", "units": {"exclude": ["noisy.service"]}},
                "files": [{"path": "/var/log/app/*.log"}],
                "syslog": {"enabled": True, "udp": 5514},
            },
            "backoff": {"initial": "2s", "max": "5m"},
            "shutdown_drain": "3s",
        }
    )
    assert config.batch_max_delay == 0.2 and config.journal.min_priority == 5
    assert config.files[0].tag == "*.log" and config.syslog.udp == 5514
    assert config.backoff_max == 300 and config.shutdown_drain == 3


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"batchh": {}}, "batchh"),  # typo at top level
        ({"sources": {"journal": {"unit": {}}}}, "sources.journal.unit"),
        ({"sources": {"files": [{"path": "/x", "tga": "t"}]}}, "sources.files[0].tga"),
        ({"sources": {"journal": {"min_priority": "loud"}}}, "sources.journal.min_priority"),
        ({"sources": {"syslog": {"tcp": 70000}}}, "sources.syslog.tcp"),
        ({"qrexec_command": "qrexec-client-vm"}, "qrexec_command"),
    ],
)
def test_config_errors_name_the_key(doc: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_exporter_config(doc)
