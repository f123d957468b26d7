"""docs/operations.md and CHANGELOG.md: generated tables in step with the code, links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from poller import docs
from poller.config import ClusterSettings, EnvCluster, Settings
from poller.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"


def test_operations_md_tables_are_what_the_code_renders() -> None:
    """The generated blocks equal a fresh rendering; run `python -m poller.docs` when this fails."""
    current = OPERATIONS.read_text(encoding="utf-8")
    assert docs.render_document(current) == current


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    """`python -m poller.docs --check` exits 1 on a stale copy and 0 once it is rewritten."""
    stale = tmp_path / "operations.md"
    text = OPERATIONS.read_text(encoding="utf-8").replace(
        "| `amqp_url` | `POLLER_AMQP_URL` |", "| `amqp_url` | `POLLER_AMQP` |"
    )
    stale.write_text(text, encoding="utf-8")
    assert docs.main(["--check", "--path", str(stale)]) == 1
    assert docs.main(["--path", str(stale)]) == 0
    assert docs.main(["--check", "--path", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == OPERATIONS.read_text(encoding="utf-8")


def test_a_document_without_the_markers_is_refused() -> None:
    """Rendering into a file that lost its markers fails loudly instead of doing nothing."""
    with pytest.raises(ValueError, match="config"):
        docs.render_document("# nothing generated here\n")


@pytest.mark.parametrize("model", [Settings, ClusterSettings])
def test_every_setting_has_a_description(model: type[Settings] | type[ClusterSettings]) -> None:
    """A key without a description would show an empty cell in the reference."""
    missing = [name for name, field in model.model_fields.items() if not field.description]
    assert missing == []


def test_every_setting_and_metric_appears_in_the_reference() -> None:
    """Each key (with its env name) and each metric has a row of its own."""
    text = OPERATIONS.read_text(encoding="utf-8")
    for name in Settings.model_fields:
        if name not in {"clusters", "ontap"}:
            assert f"| `{name}` | `POLLER_{name.upper()}` |" in text
    for name in EnvCluster.model_fields:
        assert f"| `ontap_{name}` | `POLLER_ONTAP_{name.upper()}` |" in text
    for name in ClusterSettings.model_fields:
        assert f"| `{name}` |" in text
    for collector in Metrics().registry.collect():
        assert f"`{collector.name}" in text


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (Settings.model_fields["poll_interval_max"], "> 0, ≤ 240.0"),
        (Settings.model_fields["http_port"], "≥ 0, ≤ 65535"),
        (Settings.model_fields["amqp_url"], ""),
    ],
)
def test_bounds_are_rendered_from_the_field_constraints(field: object, expected: str) -> None:
    """Ranges in the reference come from the model's own constraints."""
    assert docs.bounds_text(field) == expected  # type: ignore[arg-type]


def test_defaults_read_as_toml() -> None:
    """Booleans lower case, strings quoted, lists as arrays, no value as `none`, required fields
    say so."""
    assert docs.default_text(Settings.model_fields["publish_progress"]) == "`false`"
    assert docs.default_text(Settings.model_fields["watch_queue"]) == '`"ontap.jobs.watch"`'
    assert docs.default_text(EnvCluster.model_fields["url"]) == "none"
    assert docs.default_text(ClusterSettings.model_fields["url"]) == "required"
    assert docs.default_text(Settings.model_fields["amqp_url"]) == (
        '`["amqp://guest:guest@localhost:5672/"]`'
    )
    assert docs.type_name(Settings.model_fields["amqp_url"].annotation) == "list of strings"


def test_troubleshooting_covers_broker_tls_and_401() -> None:
    """The operations guide has a troubleshooting section for each of the three usual failures."""
    headings = re.findall(r"^### (.+)$", OPERATIONS.read_text(encoding="utf-8"), re.MULTILINE)
    assert any("broker" in h.lower() for h in headings)
    assert any("TLS" in h for h in headings)
    assert any("401" in h for h in headings)


def test_every_logged_event_name_is_documented() -> None:
    """Each event name the package logs at info or above is in the guide's table of log events."""
    pattern = re.compile(r"\blog\.(?:info|warning|error|exception)\(\s*\"([a-z_.]+)\"")
    names = set()
    for path in (ROOT / "poller").rglob("*.py"):
        if "simulator" not in path.parts:
            names.update(pattern.findall(path.read_text(encoding="utf-8")))
    text = OPERATIONS.read_text(encoding="utf-8")
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert missing == []


def test_changelog_keeps_a_changelog() -> None:
    """CHANGELOG.md follows Keep a Changelog, with an Unreleased section first."""
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "keepachangelog.com" in text
    versions = re.findall(r"^## \[([^\]]+)\]", text, re.MULTILINE)
    assert versions[0] == "Unreleased"
    unreleased = text.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]
    sections = re.findall(r"^### (\w+)$", unreleased, re.MULTILINE)
    assert sections
    assert set(sections) <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


@pytest.mark.parametrize("document", ["README.md", "docs/operations.md", "docs/client.md"])
def test_relative_links_lead_to_files(document: str) -> None:
    """Every relative link of the user documentation points at a file of the repository."""
    path = ROOT / document
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    missing = [link for link in local if not (path.parent / link).exists()]
    assert missing == []
