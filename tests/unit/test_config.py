"""Configuration: TOML, MOOSENG_* precedence, and one-line errors naming the key and value."""

from pathlib import Path

import pytest

from mooseng import config
from mooseng.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("daemon", ["master", "chunkserver", "client"])
def test_shipped_templates_are_valid(daemon):
    cfg = config.load(daemon, REPO / "docker" / "configs" / f"{daemon}.toml", env={})
    assert cfg.cluster_id == "mooseng"


def test_environment_wins_over_file(tmp_path):
    path = tmp_path / "cs.toml"
    path.write_text('[chunkserver]\nserver_id = 1\nmaster_addrs = ["a:1"]\ndata_dirs = ["/d1"]\n')
    cfg = config.load("chunkserver", path, env={"MOOSENG_SERVER_ID": "7", "MOOSENG_DATA_DIRS": "/x,/y , /z"})
    assert cfg.server_id == 7
    assert cfg.data_dirs == ["/x", "/y", "/z"]
    assert cfg.master_addrs == ["a:1"]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MOOSENG_SERVER_ID": "x"}, "server_id = 'x'"),
        ({"MOOSENG_SERVER_ID": "0"}, "server_id = '0': must be >= 1"),
        ({"MOOSENG_MASTER_ADDRS": "nohost"}, "master_addrs = 'nohost'"),
        ({"MOOSENG_MASTER_ADDRS": "h:99999"}, "master_addrs = 'h:99999'"),
        ({"MOOSENG_HEARTBEAT_INTERVAL_S": "fast"}, "heartbeat_interval_s = 'fast'"),
        ({"MOOSENG_LOG_LEVEL": "loud"}, "log_level = 'loud': must be one of"),
        ({"MOOSENG_SCRUB_MB_S": "-1"}, "scrub_mb_s = '-1': must be >= 0"),
        ({"MOOSENG_REPLICATION_MB_S": "0"}, "replication_mb_s = '0': must be >= 0.1"),
        ({"MOOSENG_REPLICATION_WORKERS": "many"}, "replication_workers = 'many'"),
    ],
)
def test_bad_values_name_key_and_value(env, message):
    base = {"MOOSENG_SERVER_ID": "1", "MOOSENG_MASTER_ADDRS": "127.0.0.1:9421", "MOOSENG_DATA_DIRS": "/d"}
    with pytest.raises(ConfigError) as err:
        config.load("chunkserver", env={**base, **env})
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_missing_required_key_names_the_variable():
    with pytest.raises(ConfigError, match=r"master_endpoints \(or MOOSENG_MASTER_ENDPOINTS\) is required"):
        config.load("client", env={})


def test_unknown_key_and_bad_toml(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[master]\ndata_dir = "/x"\ndata_dri = "/y"\n')
    with pytest.raises(ConfigError, match="data_dri = '/y': unknown key"):
        config.load("master", path, env={})
    path.write_text("[master\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.load("master", path, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        config.load("master", tmp_path / "absent.toml", env={})


def test_master_advertises_a_reachable_client_address(tmp_path):
    from mooseng.errors import QuietError
    from mooseng.master.main import _advertise

    peers = {"master-1": "m1.example:9422", "master-2": "m2.example:9432"}

    def cfg(**env):
        return config.load("master", env={"MOOSENG_DATA_DIR": str(tmp_path), **env})

    assert _advertise(cfg(MOOSENG_LISTEN="10.0.0.5:9421"), peers) == "10.0.0.5:9421"
    assert _advertise(cfg(MOOSENG_LISTEN="0.0.0.0:9421"), peers) == "m1.example:9421"
    assert _advertise(cfg(MOOSENG_LISTEN="0.0.0.0:9421", MOOSENG_ADVERTISE="lb:1"), peers) == "lb:1"
    with pytest.raises(QuietError, match="advertise = 'nope'"):
        _advertise(cfg(MOOSENG_ADVERTISE="nope"), peers)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MOOSENG_REBALANCE_THRESHOLD_PCT": "150"}, "rebalance_threshold_pct = '150': must be <= 100"),
        ({"MOOSENG_REPLICATION_MAX_PER_SERVER": "0"}, "replication_max_per_server = '0': must be >= 1"),
        ({"MOOSENG_HEALING_INTERVAL_S": "soon"}, "healing_interval_s = 'soon'"),
        ({"MOOSENG_REBALANCE_MAX_PER_SERVER": "-1"}, "rebalance_max_per_server = '-1': must be >= 0"),
    ],
)
def test_bad_healing_settings_name_key_and_value(env, message):
    with pytest.raises(ConfigError) as err:
        config.load("master", env={"MOOSENG_DATA_DIR": "/d", **env})
    assert message in str(err.value)


def test_healing_defaults():
    cfg = config.load("master", env={"MOOSENG_DATA_DIR": "/d"})
    assert (cfg.chunkserver_timeout_s, cfg.healing_interval_s, cfg.rebalance_threshold_pct) == (10.0, 1.0, 5.0)
    cs = config.load("chunkserver", env={"MOOSENG_SERVER_ID": "1", "MOOSENG_MASTER_ADDRS": "h:1",
                                         "MOOSENG_DATA_DIRS": "/d"})
    assert (cs.replication_mb_s, cs.replication_workers, cs.scrub_mb_s) == (100.0, 4, 8.0)
