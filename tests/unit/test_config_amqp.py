"""The broker's settings: ``amqp_url`` as a list of nodes, the TLS files and the password file,
each refused at start-up with one line naming its key and never showing a password."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme

from poller.amqp.nodes import BrokerTarget
from poller.cli import EX_CONFIG, main
from poller.config import load_settings
from poller.errors import ConfigError

SECRET = "Amqp-Secret-pw-31e7"
NODES = ["amqps://poller:" + SECRET + "@mq-1.example.com:5671/", "amqps://mq-2.example.com:5671/"]


def config_error(tmp_path: Path, toml: str = "", environ: dict[str, str] | None = None) -> str:
    """The ConfigError text of loading ``toml``; checked to be one line without the password."""
    path = tmp_path / "poller.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ=environ or {})
    text = str(caught.value)
    assert "\n" not in text
    assert SECRET not in text
    return text


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA bundle, a client certificate with its key apart, and both in one file."""
    directory = tmp_path_factory.mktemp("pems")
    ca = trustme.CA()
    client = ca.issue_cert("poller.example.com")
    files = {
        "ca": directory / "ca.pem",
        "cert": directory / "client.pem",
        "key": directory / "client.key",
        "both": directory / "client-and-key.pem",
        "other_key": directory / "other.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["both"]))
    ca.issue_cert("other.example.com").private_key_pem.write_to_path(str(files["other_key"]))
    return files


@pytest.mark.parametrize(
    ("toml", "environ", "expected"),
    [
        pytest.param('amqp_url = "amqp://a:5672/"', {}, ["amqp://a:5672/"], id="one-string"),
        pytest.param(
            'amqp_url = ["amqp://a:5672/", "amqp://b:5672/"]',
            {},
            ["amqp://a:5672/", "amqp://b:5672/"],
            id="toml-array",
        ),
        pytest.param(
            "",
            {"POLLER_AMQP_URL": "amqp://a:5672/, amqp://b:5672/,amqp://c:5672/"},
            ["amqp://a:5672/", "amqp://b:5672/", "amqp://c:5672/"],
            id="env-comma-separated",
        ),
        pytest.param(
            'amqp_url = ["amqp://a:5672/"]',
            {"POLLER_AMQP_URL": "amqp://b:5672/"},
            ["amqp://b:5672/"],
            id="env-wins",
        ),
    ],
)
def test_amqp_url_names_one_node_or_several(
    tmp_path: Path, toml: str, environ: dict[str, str], expected: list[str]
) -> None:
    """``amqp_url`` is a TOML string or array, or a comma-separated env value: a list of nodes."""
    path = tmp_path / "poller.toml"
    path.write_text(toml, encoding="utf-8")
    assert load_settings(path, environ=environ).amqp_url == expected


@pytest.mark.parametrize(
    ("toml", "environ", "words"),
    [
        pytest.param(
            f'amqp_url = ["{NODES[0]}", "http://{SECRET}@mq-2/"]', {}, "node 2", id="http-node"
        ),
        pytest.param(
            "", {"POLLER_AMQP_URL": f"{NODES[0]},mq-2:5672"}, "node 2", id="env-no-scheme"
        ),
        pytest.param("amqp_url = []", {}, "names no node", id="empty-list"),
        pytest.param("", {"POLLER_AMQP_URL": " , "}, "names no node", id="env-empty"),
        pytest.param(f'amqp_url = "amqp://:{SECRET}@/"', {}, "no host", id="no-host"),
    ],
)
def test_bad_amqp_url_is_refused_without_showing_it(
    tmp_path: Path, toml: str, environ: dict[str, str], words: str
) -> None:
    """A bad node is refused naming ``amqp_url`` and its position, never its password."""
    text = config_error(tmp_path, toml, environ)
    assert text.startswith("amqp_url: ")
    assert words in text


def test_tls_files_are_accepted_when_readable_pem(tmp_path: Path, pems: dict[str, Path]) -> None:
    """A CA bundle and a client certificate with its key load into the settings as paths."""
    toml = (
        f'amqp_url = ["{NODES[0]}", "{NODES[1]}"]\n'
        f'amqp_ca_file = "{pems["ca"]}"\n'
        f'amqp_cert_file = "{pems["cert"]}"\n'
        f'amqp_key_file = "{pems["key"]}"\n'
    )
    path = tmp_path / "poller.toml"
    path.write_text(toml, encoding="utf-8")
    settings = load_settings(path, environ={})
    assert (settings.amqp_ca_file, settings.amqp_cert_file, settings.amqp_key_file) == (
        pems["ca"],
        pems["cert"],
        pems["key"],
    )
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("files", "key", "words"),
    [
        pytest.param({"ca": "missing"}, "amqp_ca_file", "cannot read", id="ca-missing"),
        pytest.param({"ca": "key"}, "amqp_ca_file", "no PEM certificate", id="ca-not-a-cert"),
        pytest.param({"cert": "missing"}, "amqp_cert_file", "cannot read", id="cert-missing"),
        pytest.param({"cert": "ca"}, "amqp_cert_file", "amqp_key_file", id="cert-without-key"),
        pytest.param(
            {"cert": "cert", "key": "other_key"},
            "amqp_key_file",
            "not the PEM private key",
            id="wrong-key",
        ),
        pytest.param({"key": "key"}, "amqp_key_file", "needs amqp_cert_file", id="key-alone"),
        pytest.param(
            {"cert": "cert", "key": "missing"}, "amqp_key_file", "cannot read", id="key-missing"
        ),
    ],
)
def test_bad_tls_file_is_refused_naming_its_key(
    tmp_path: Path, pems: dict[str, Path], files: dict[str, str], key: str, words: str
) -> None:
    """A missing, unreadable or mismatched TLS file stops start-up with one line naming it."""
    lines = [f'amqp_url = "{NODES[0]}"']
    for name, which in files.items():
        path = tmp_path / "missing.pem" if which == "missing" else pems[which]
        lines.append(f'amqp_{name}_file = "{path}"')
    text = config_error(tmp_path, "\n".join(lines))
    assert text.startswith(f"{key}: ")
    assert words in text


def test_tls_files_without_an_amqps_node_are_refused(tmp_path: Path, pems: dict[str, Path]) -> None:
    """A CA bundle given with only ``amqp://`` nodes is a mistake: TLS would not be used."""
    toml = f'amqp_url = "amqp://mq-1:5672/"\namqp_ca_file = "{pems["ca"]}"\n'
    assert config_error(tmp_path, toml).startswith("amqp_ca_file: TLS files need an amqps://")


def test_password_file_replaces_every_urls_password(tmp_path: Path) -> None:
    """``amqp_password_file`` (trailing newline dropped) is the password of every node."""
    secret = tmp_path / "amqp-password"
    secret.write_text(SECRET + "\n", encoding="utf-8")
    environ = {
        "POLLER_AMQP_URL": "amqp://poller:old@mq-1:5672/,amqp://mq-2:5672/vh",
        "POLLER_AMQP_PASSWORD_FILE": str(secret),
    }
    settings = load_settings(None, environ=environ)
    urls, context, secrets = BrokerTarget.of(settings).resolve()
    assert [(u.user, u.password, u.host, u.path) for u in urls] == [
        ("poller", SECRET, "mq-1", "/"),
        ("guest", SECRET, "mq-2", "/vh"),
    ]
    assert context is None  # no amqps:// node
    assert SECRET in secrets and "old" in secrets
    assert SECRET not in repr(settings) + repr(BrokerTarget.of(settings))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        pytest.param(None, "cannot read", id="missing"),
        pytest.param(b"\n", "is empty", id="empty"),
        pytest.param(b"\xff\xfe" + SECRET.encode(), "not UTF-8", id="binary"),
    ],
)
def test_bad_password_file_is_refused(tmp_path: Path, content: bytes | None, words: str) -> None:
    """A password file that is missing, empty or not text stops start-up naming the key."""
    secret = tmp_path / "amqp-password"
    if content is not None:
        secret.write_bytes(content)
    text = config_error(tmp_path, f'amqp_password_file = "{secret}"')
    assert text.startswith("amqp_password_file: ")
    assert words in text


def test_run_exits_78_with_one_line_naming_the_tls_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``run`` with an unreadable ``amqp_ca_file`` exits 78 before connecting, with one line."""
    for name in [n for n in os.environ if n.startswith("POLLER_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "poller.toml"
    path.write_text(
        f'amqp_url = "{NODES[0]}"\namqp_ca_file = "{tmp_path / "nowhere.pem"}"\n', encoding="utf-8"
    )
    assert main(["run", "--config", str(path)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "amqp_ca_file" in err
    assert SECRET not in err
