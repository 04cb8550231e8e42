"""Rotation keys of collector.yaml: defaults, lookups, and errors that name the key."""

import pytest
import yaml

from qubes_logvm.config.collector import parse_collector_config
from qubes_logvm.config.storage_policy import (
    RetentionConfig,
    class_of,
    max_age_for,
    quota_for,
)
from qubes_logvm.core.errors import ConfigError
from support.segments import config

pytestmark = pytest.mark.inprocess

FULL = """
segment: {max_bytes: 8M, max_age: 12h}
quota:
  default: 512M
  classes: {dispvm: 64M, template: 2G}
  qubes: {work: 4G, disp7: 100M}
classes:
  template: [debian-*, fedora-*]
global: {max_bytes: 20G, keep_free: 2G}
retention:
  max_age:
    default: 30d
    classes: {dispvm: 1d}
    qubes: {vault: 0}
  dispvm_delete_after_close: 10m
compress: {after: 2h, level: 5}
"""


def test_defaults() -> None:
    cfg = config("{}")
    assert cfg == RetentionConfig()
    assert (cfg.segment_max_bytes, cfg.quota_default) == (32 << 20, 1 << 30)
    assert (cfg.global_max_bytes, cfg.global_keep_free) == (0, 256 << 20)
    assert (cfg.compress_after, cfg.compress_level) == (3600.0, 3)
    assert cfg.max_age_default == 0 and cfg.dispvm_delete_after_close is None
    assert class_of(cfg, "disp1234") == "dispvm"
    assert class_of(cfg, "display") is None


def test_full_config_and_lookups() -> None:
    cfg = config(FULL)
    assert cfg.segment_max_bytes == 8 << 20 and cfg.segment_max_age == 12 * 3600
    assert quota_for(cfg, "work") == 4 << 30  # by name
    assert quota_for(cfg, "disp7") == 100 << 20  # name beats class
    assert quota_for(cfg, "disp8") == 64 << 20  # by class
    assert quota_for(cfg, "debian-12") == 2 << 30
    assert quota_for(cfg, "personal") == 512 << 20  # default
    assert class_of(cfg, "fedora-40") == "template"
    assert max_age_for(cfg, "disp3") == 86400
    assert max_age_for(cfg, "vault") == 0  # kept forever, whatever the default
    assert max_age_for(cfg, "work") == 30 * 86400
    assert cfg.dispvm_delete_after_close == 600
    assert (cfg.global_max_bytes, cfg.global_keep_free) == (20 << 30, 2 << 30)
    assert (cfg.compress_after, cfg.compress_level) == (7200, 5)


def test_redefining_the_dispvm_class_replaces_its_patterns() -> None:
    cfg = config("classes: {dispvm: ['tmp-*']}")
    assert class_of(cfg, "tmp-1") == "dispvm"
    assert class_of(cfg, "disp12") is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # unknown keys at every level
        ("quota: {defualt: 1G}", "quota.defualt"),
        ("segment: {max_size: 1M}", "segment.max_size"),
        ("global: {cap: 1G}", "global.cap"),
        ("retention: {max_age: {deafult: 1d}}", "retention.max_age.deafult"),
        ("retention: {keep: 1d}", "retention.keep"),
        ("compress: {algo: xz}", "compress.algo"),
        # negative or malformed sizes
        ("quota: {default: -1}", "quota.default"),
        ("quota: {default: -5G}", "quota.default"),
        ("global: {max_bytes: -1}", "global.max_bytes"),
        ("global: {keep_free: lots}", "global.keep_free"),
        ("segment: {max_bytes: 1K}", "segment.max_bytes"),
        # a quota below one segment
        ("quota: {default: 16M}", "quota.default"),
        ("segment: {max_bytes: 64M}\nquota: {qubes: {work: 32M}}", "quota.qubes.work"),
        ("quota: {classes: {dispvm: 1M}}", "quota.classes.dispvm"),
        # classes referenced but never defined
        ("quota: {classes: {template: 2G}}", "quota.classes.template"),
        ("retention: {max_age: {classes: {tmpl: 1d}}}", "retention.max_age.classes.tmpl"),
        # bad names, durations, levels, class lists
        ("quota: {qubes: {'../etc': 1G}}", "quota.qubes.../etc"),
        ("retention: {max_age: {default: -1d}}", "retention.max_age.default"),
        ("retention: {dispvm_delete_after_close: soon}", "retention.dispvm_delete_after_close"),
        ("compress: {level: 0}", "compress.level"),
        ("compress: {level: 23}", "compress.level"),
        ("compress: {after: yes}", "compress.after"),
        ("classes: {template: debian-*}", "classes.template"),
        ("classes: {template: []}", "classes.template"),
        ("segment: {max_age: 0}", "segment.max_age"),
    ],
)
def test_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(text)
    assert str(caught.value).startswith(key + ":"), caught.value


def test_collector_loader_reads_rotation_keys_once_and_still_refuses_unknown() -> None:
    data = yaml.safe_load(FULL)
    cfg = parse_collector_config(data)
    assert cfg.retention == config(FULL)
    with pytest.raises(ConfigError, match="^quotas: unknown key"):
        parse_collector_config({**data, "quotas": {"default": "1G"}})
    with pytest.raises(ConfigError, match="^quota.qubes.work: quota"):
        parse_collector_config({**data, "quota": {"qubes": {"work": "1M"}}})
