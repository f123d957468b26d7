"""``load_settings``: the INTERFACE section 2 defaults, TOML, ``POLLER_*`` overrides, and one-line
errors that name the key and never the password."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from poller.config import load_settings
from poller.errors import ConfigError

SECRET = "hunter2-Secret!"
CLUSTER = f"""
[clusters.cluster1]
url = "https://cluster1.example.com/"
username = "admin"
password = "{SECRET}"
"""
TWO_CLUSTERS = f"""
poll_interval_max = 20
publish_progress = true

[clusters.cluster1]
url = "https://cluster1.example.com/"
username = "admin"
password = "{SECRET}"

[clusters.lab-2_b]
url = "http://10.0.0.2"
username = "monitor"
password_file = "{{secret}}"
verify = false
max_concurrent_requests = 2
batch = false
"""
ENV_CLUSTER = {
    "POLLER_ONTAP_URL": "https://ontap.lab.example.com",
    "POLLER_ONTAP_USERNAME": "admin",
    "POLLER_ONTAP_PASSWORD": SECRET,
}


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A Docker secret: the password followed by a newline."""
    path = tmp_path / "ontap-password"
    path.write_text(f"{SECRET}\n", encoding="utf-8")
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "poller.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None = None, environ: dict[str, str] | None = None) -> str:
    """The text of the ConfigError that loading raises; checked to be one line without secrets."""
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={} if environ is None else environ)
    text = str(caught.value)
    assert "\n" not in text
    assert SECRET not in text
    return text


def test_defaults_match_the_interface_table() -> None:
    """Without file or environment, every setting has the default of INTERFACE section 2."""
    settings = load_settings(None, environ={})
    assert settings.model_dump(include=set(DEFAULTS)) == DEFAULTS
    assert settings.clusters == {}


DEFAULTS = {
    "amqp_url": ["amqp://guest:guest@localhost:5672/"],
    "amqp_ca_file": None,
    "amqp_cert_file": None,
    "amqp_key_file": None,
    "amqp_password_file": None,
    "watch_queue": "ontap.jobs.watch",
    "dead_letter_queue": "ontap.jobs.watch.dead",
    "events_exchange": "ontap.jobs",
    "poll_interval_min": 1.0,
    "poll_interval_max": 30.0,
    "watch_timeout": 86400,
    "checkpoint_interval": 600,
    "max_watches": 10000,
    "publish_progress": False,
    "http_port": 9102,
    "log_format": "auto",
}


def test_toml_file_with_two_clusters(tmp_path: Path, secret_file: Path) -> None:
    """A TOML file sets top-level keys and two clusters, each with its own options."""
    path = write(tmp_path, TWO_CLUSTERS.replace("{secret}", str(secret_file)))
    settings = load_settings(path, environ={})
    assert settings.poll_interval_max == 20
    assert settings.publish_progress is True
    assert settings.cluster_names() == {"cluster1", "lab-2_b"}
    first, second = settings.clusters["cluster1"], settings.clusters["lab-2_b"]
    assert (first.url, first.username, first.secret()) == (
        "https://cluster1.example.com",
        "admin",
        SECRET,
    )
    assert (first.verify, first.max_concurrent_requests, first.batch) == (True, 6, True)
    assert (second.url, second.username, second.secret()) == ("http://10.0.0.2", "monitor", SECRET)
    assert (second.verify, second.max_concurrent_requests, second.batch) == (False, 2, False)
    settings.require_clusters()


def test_config_path_is_read_from_poller_config(tmp_path: Path) -> None:
    """Without a path argument, ``POLLER_CONFIG`` names the file."""
    path = write(tmp_path, CLUSTER)
    settings = load_settings(None, environ={"POLLER_CONFIG": str(path)})
    assert settings.cluster_names() == {"cluster1"}


@pytest.mark.parametrize(
    ("environ", "key", "value"),
    [
        pytest.param({"POLLER_POLL_INTERVAL_MAX": "60"}, "poll_interval_max", 60.0, id="float"),
        pytest.param({"POLLER_MAX_WATCHES": "50"}, "max_watches", 50, id="int"),
        pytest.param({"POLLER_PUBLISH_PROGRESS": "true"}, "publish_progress", True, id="bool"),
        pytest.param({"POLLER_HTTP_PORT": "0"}, "http_port", 0, id="http-off"),
        pytest.param({"POLLER_LOG_FORMAT": "json"}, "log_format", "json", id="literal"),
        pytest.param(
            {"POLLER_AMQP_URL": "amqps://u:p@mq.example.com/vh"},
            "amqp_url",
            ["amqps://u:p@mq.example.com/vh"],
            id="amqp-url",
        ),
    ],
)
def test_env_overrides_a_top_level_key(
    tmp_path: Path, environ: dict[str, str], key: str, value: object
) -> None:
    """``POLLER_<KEY>`` overrides the same key of the TOML file."""
    path = write(tmp_path, f"poll_interval_max = 20\nmax_watches = 7\n{CLUSTER}")
    settings = load_settings(path, environ=environ)
    assert getattr(settings, key) == value
    assert settings.cluster_names() == {"cluster1"}


@pytest.mark.parametrize(
    ("toml", "environ", "key"),
    [
        pytest.param("poll_interval_max = 241", {}, "poll_interval_max", id="interval-max-241"),
        pytest.param("", {"POLLER_POLL_INTERVAL_MAX": "241"}, "poll_interval_max", id="env-241"),
        pytest.param("poll_interval_max = 0", {}, "poll_interval_max", id="interval-max-0"),
        pytest.param(
            "poll_interval_min = 50\npoll_interval_max = 40",
            {},
            "poll_interval_min",
            id="min-above-max",
        ),
        pytest.param("poll_interval_min = -1", {}, "poll_interval_min", id="min-negative"),
        pytest.param("max_watches = 0", {}, "max_watches", id="max-watches-0"),
        pytest.param("max_watches = 70000", {}, "max_watches", id="max-watches-huge"),
        pytest.param("", {"POLLER_MAX_WATCHES": "many"}, "max_watches", id="max-watches-text"),
        pytest.param('log_format = "xml"', {}, "log_format", id="log-format"),
        pytest.param('amqp_url = "http://localhost:5672/"', {}, "amqp_url", id="amqp-url-http"),
        pytest.param("", {"POLLER_AMQP_URL": "localhost"}, "amqp_url", id="amqp-url-env"),
        pytest.param("http_port = 70000", {}, "http_port", id="http-port"),
        pytest.param('watch_timeout = "a day"', {}, "watch_timeout", id="watch-timeout"),
        pytest.param("checkpoint_interval = 0", {}, "checkpoint_interval", id="checkpoint"),
        pytest.param('colour = "blue"', {}, "colour", id="unknown-top-level-key"),
        pytest.param("poll_interval_max = ", {}, "config", id="not-toml"),
    ],
)
def test_bad_top_level_setting_is_refused(
    tmp_path: Path, toml: str, environ: dict[str, str], key: str
) -> None:
    """A bad top-level value is refused with one line naming its key."""
    assert key in config_error(write(tmp_path, f"{toml}\n{CLUSTER}"), environ)


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    """A config file that does not exist is named in the error."""
    assert "nowhere.toml" in config_error(tmp_path / "nowhere.toml")


def cluster_toml(name: str = "cluster1", **fields: object) -> str:
    lines = [f"[clusters.{name}]"]
    for key, value in fields.items():
        literal = str(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
        lines.append(f"{key} = {literal}")
    return "\n".join(lines) + "\n"


BASE = {"url": "https://cluster1.example.com", "username": "admin"}


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        pytest.param(
            cluster_toml("Cluster1", **BASE, password=SECRET), "Cluster1", id="upper-case-name"
        ),
        pytest.param(cluster_toml("c.1", **BASE, password=SECRET), "c.1", id="dot-in-name"),
        pytest.param(cluster_toml("-c1", **BASE, password=SECRET), "-c1", id="leading-dash"),
        pytest.param(cluster_toml(**BASE), "password", id="no-password"),
        pytest.param(
            cluster_toml(**BASE, password=SECRET, password_file="/run/secrets/ontap"),
            "password_file",
            id="password-and-password-file",
        ),
        pytest.param(
            cluster_toml(**BASE, password_file="/nonexistent/ontap-secret"),
            "password_file",
            id="missing-password-file",
        ),
        pytest.param(
            cluster_toml(**BASE, password=SECRET, verify="/nonexistent/ca.pem"),
            "verify",
            id="verify-missing-ca",
        ),
        pytest.param(cluster_toml(**BASE, password=SECRET, verify=3), "verify", id="verify-number"),
        pytest.param(
            cluster_toml(url="ftp://cluster1", username="admin", password=SECRET),
            "url",
            id="url-scheme",
        ),
        pytest.param(
            cluster_toml(url="https://cluster1", password=SECRET), "username", id="no-username"
        ),
        pytest.param(
            cluster_toml(**BASE, password=SECRET, max_concurrent_requests=0),
            "max_concurrent_requests",
            id="max-concurrent-0",
        ),
        pytest.param(
            cluster_toml(**BASE, password=SECRET, passwd=SECRET), "passwd", id="unknown-cluster-key"
        ),
    ],
)
def test_bad_cluster_is_refused(tmp_path: Path, toml: str, names: str) -> None:
    """A bad cluster table is refused with one line naming the cluster key, never the password."""
    text = config_error(write(tmp_path, toml))
    assert "clusters" in text
    assert names in text


def test_empty_password_file_is_refused(tmp_path: Path) -> None:
    """A password_file holding only a newline is refused, naming password_file."""
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    toml = cluster_toml(**BASE, password_file=str(empty))
    assert "clusters.cluster1.password_file" in config_error(write(tmp_path, toml))


def test_password_file_trailing_newline_is_not_part_of_the_password(
    tmp_path: Path, secret_file: Path
) -> None:
    """A Docker secret's trailing newline is dropped; the rest is the password."""
    toml = cluster_toml(**BASE, password_file=str(secret_file))
    settings = load_settings(write(tmp_path, toml), environ={})
    assert settings.clusters["cluster1"].secret() == SECRET


def test_verify_accepts_an_existing_ca_bundle(tmp_path: Path) -> None:
    """``verify`` may name a CA bundle file that exists."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    toml = cluster_toml(**BASE, password=SECRET, verify=str(ca))
    settings = load_settings(write(tmp_path, toml), environ={})
    assert settings.clusters["cluster1"].verify == str(ca)


def test_undecodable_password_file_is_refused(tmp_path: Path) -> None:
    """A password_file that is not UTF-8 is refused as ConfigError naming password_file."""
    binary = tmp_path / "binary-secret"
    binary.write_bytes(b"\xff\xfehunter2\n")
    toml = cluster_toml(**BASE, password_file=str(binary))
    assert "password_file" in config_error(write(tmp_path, toml))


# --- the single-cluster env shortcut -----------------------------------------------------------


def test_env_shortcut_defines_one_cluster(secret_file: Path) -> None:
    """``POLLER_ONTAP_*`` alone define one cluster, read from a password file, TLS off, named."""
    environ = {
        "POLLER_ONTAP_URL": "https://ontap.lab.example.com/",
        "POLLER_ONTAP_USERNAME": "admin",
        "POLLER_ONTAP_PASSWORD_FILE": str(secret_file),
        "POLLER_ONTAP_VERIFY": "false",
        "POLLER_ONTAP_NAME": "lab",
    }
    settings = load_settings(None, environ=environ)
    assert settings.cluster_names() == {"lab"}
    cluster = settings.clusters["lab"]
    assert (cluster.url, cluster.username, cluster.verify) == (
        "https://ontap.lab.example.com",
        "admin",
        False,
    )
    assert cluster.secret() == SECRET
    settings.require_clusters()


def test_env_shortcut_defaults_to_cluster_default() -> None:
    """Without ``POLLER_ONTAP_NAME`` the cluster is called ``default`` and TLS is verified."""
    settings = load_settings(None, environ=ENV_CLUSTER)
    assert settings.cluster_names() == {"default"}
    assert settings.clusters["default"].verify is True
    assert settings.clusters["default"].secret() == SECRET


def test_env_shortcut_joins_the_toml_clusters(tmp_path: Path) -> None:
    """The env cluster is added beside the clusters of the file."""
    settings = load_settings(write(tmp_path, CLUSTER), environ=ENV_CLUSTER)
    assert settings.cluster_names() == {"cluster1", "default"}


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        pytest.param({**ENV_CLUSTER, "POLLER_ONTAP_NAME": "Lab"}, "ontap_name", id="bad-name"),
        pytest.param(
            {**ENV_CLUSTER, "POLLER_ONTAP_NAME": "cluster1"}, "ontap_name", id="name-clash"
        ),
        pytest.param(
            {k: v for k, v in ENV_CLUSTER.items() if k != "POLLER_ONTAP_USERNAME"},
            "ontap_username",
            id="no-username",
        ),
        pytest.param(
            {**ENV_CLUSTER, "POLLER_ONTAP_VERIFY": "/nonexistent/ca.pem"},
            "ontap_verify",
            id="verify-missing-ca",
        ),
        pytest.param(
            {**ENV_CLUSTER, "POLLER_ONTAP_PASSWORD": "", "POLLER_ONTAP_PASSWORD_FILE": "/nope"},
            "password",
            id="password-and-file",
        ),
        pytest.param(
            {
                "POLLER_ONTAP_URL": "https://ontap.lab.example.com",
                "POLLER_ONTAP_USERNAME": "admin",
                "POLLER_ONTAP_PASSWORD_FILE": "/nonexistent/secret",
            },
            "password_file",
            id="missing-password-file",
        ),
    ],
)
def test_bad_env_shortcut_is_refused(tmp_path: Path, environ: dict[str, str], key: str) -> None:
    """A bad ``POLLER_ONTAP_*`` value is refused with one line naming the key."""
    assert key in config_error(write(tmp_path, CLUSTER), environ)


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        pytest.param({**ENV_CLUSTER, "POLLER_ONTAP_URL": "ftp://ontap"}, "ontap_url", id="url"),
        pytest.param(
            {k: v for k, v in ENV_CLUSTER.items() if k != "POLLER_ONTAP_PASSWORD"},
            "ontap_password",
            id="no-password",
        ),
    ],
)
def test_bad_env_shortcut_names_its_ontap_key(environ: dict[str, str], key: str) -> None:
    """An env-cluster error names the ``ontap_*`` key the operator has to fix."""
    assert key in config_error(environ=environ)


def test_unparsable_env_override_of_a_table_is_refused() -> None:
    """``POLLER_CLUSTERS`` that is not JSON is refused as ConfigError naming ``clusters``."""
    assert "clusters" in config_error(environ={"POLLER_CLUSTERS": "cluster1"})


# --- require_clusters, secrecy -----------------------------------------------------------------


def test_require_clusters_refuses_no_cluster() -> None:
    """``run`` needs a cluster: ``require_clusters`` raises a one-line ConfigError naming it."""
    settings = load_settings(None, environ={})
    with pytest.raises(ConfigError, match="clusters") as caught:
        settings.require_clusters()
    assert "\n" not in str(caught.value)


def test_password_never_appears_in_repr(tmp_path: Path, secret_file: Path) -> None:
    """Neither repr nor str of the settings, nor of a cluster, shows a password."""
    path = write(tmp_path, TWO_CLUSTERS.replace("{secret}", str(secret_file)))
    settings = load_settings(path, environ=ENV_CLUSTER)
    shown = [repr(settings), str(settings), settings.model_dump_json()]
    shown += [repr(cluster) for cluster in settings.clusters.values()]
    assert not [text for text in shown if SECRET in text]


def test_environment_of_the_process_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit ``environ`` is all that is read; the process environment is unchanged after."""
    monkeypatch.setenv("POLLER_MAX_WATCHES", "3")
    before = dict(os.environ)
    settings = load_settings(None, environ={"POLLER_HTTP_PORT": "0"})
    assert (settings.max_watches, settings.http_port) == (10000, 0)
    assert dict(os.environ) == before
