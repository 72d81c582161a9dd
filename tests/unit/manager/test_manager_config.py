"""manager.yaml values that guard the REST API: bad ones stop the manager with an error naming the key."""

from __future__ import annotations

import pytest

from dragonfly.common.errors import ConfigError
from dragonfly.manager import config


@pytest.mark.parametrize("entry", ["*", "proxy.internal", "10.0.0.0/33", "10.0.0.1/8"])
def test_trusted_proxies_take_only_addresses_and_networks(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.rest.*trustedProxies: .* is not an IP address or a CIDR"):
        config.load(None, overrides={"server": {"rest": {"trustedProxies": ["127.0.0.1", entry]}}})


def test_trusted_proxies_default_to_none() -> None:
    cfg = config.load(None, overrides={"server": {"rest": {"trustedProxies": ["10.244.0.0/16", "::1"]}}})
    assert cfg.server.rest.trusted_proxies == ["10.244.0.0/16", "::1"]
    assert config.load(None).server.rest.trusted_proxies == []


def test_the_per_address_sign_in_limit_is_at_least_one() -> None:
    with pytest.raises(ConfigError, match="signinMaxFailuresPerAddress must be >= 1"):
        config.load(None, overrides={"auth": {"signinMaxFailuresPerAddress": 0}})


@pytest.mark.parametrize("lease", ["1s", "2h"])
def test_the_job_lease_is_bounded(lease: str) -> None:
    with pytest.raises(ConfigError, match=r"job: lease must be between 5s and 3600s"):
        config.load(None, overrides={"job": {"lease": lease}})


def test_the_job_lease_defaults_to_thirty_seconds() -> None:
    assert config.load(None).job.lease == 30
    assert config.load(None, overrides={"job": {"lease": "2m"}}).job.lease == 120
