"""Reference tables of ``docs/operations.md``, rendered from the code so that they cannot drift.

The configuration tables come from ``Settings.model_fields`` and ``ClusterSettings.model_fields``
(their ``Field(description=...)``), the metrics table from the instruments of ``Metrics``.
``python -m poller.docs`` rewrites the generated blocks of ``docs/operations.md`` in place;
``python -m poller.docs --check`` exits 1 when they differ from what the code says.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import annotated_types
from prometheus_client.metrics import MetricWrapperBase
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from poller.config import ClusterSettings, EnvCluster, Settings
from poller.metrics import Metrics

OPERATIONS_MD: Final = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
#: Keys of ``Settings`` that are not plain top-level settings: shown in tables of their own.
_TABLES: Final = frozenset({"clusters", "ontap"})
_BOUNDS: Final[list[tuple[type[Any], str, str]]] = [
    (annotated_types.Gt, "gt", "> {}"),
    (annotated_types.Ge, "ge", "≥ {}"),
    (annotated_types.Lt, "lt", "< {}"),
    (annotated_types.Le, "le", "≤ {}"),
]


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: ``number``, ``string (secret)``, ``true/false or path``."""
    if typing.get_origin(annotation) is Literal:
        return " / ".join(f"`{value}`" for value in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return f"list of {type_name(item)}s"
    if isinstance(annotation, types.UnionType):
        parts = [type_name(arg) for arg in typing.get_args(annotation) if arg is not type(None)]
        return " or ".join(parts)
    names = {
        str: "string",
        float: "number",
        int: "integer",
        bool: "true/false",
        Path: "path",
        SecretStr: "string (secret)",
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default_text(field: FieldInfo) -> str:
    """The default as it would be written in TOML; ``required`` when there is none."""
    if field.is_required():
        return "required"
    value = field.default
    if value is PydanticUndefined or value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`"
    return f"`{value}`"


def bounds_text(field: FieldInfo) -> str:
    parts = [
        template.format(getattr(item, attr))
        for item in field.metadata
        for kind, attr, template in _BOUNDS
        if isinstance(item, kind)
    ]
    return ", ".join(parts)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _table(
    fields: dict[str, FieldInfo],
    key: Callable[[str], str],
    headings: tuple[str, ...] = ("key", "env", "type", "default", "meaning"),
    prefix: str = "",
) -> list[str]:
    lines = [_row(headings), _row(["---"] * len(headings))]
    for name, field in fields.items():
        meaning = field.description or ""
        if bounds := bounds_text(field):
            meaning = f"{meaning} Range: {bounds}."
        cells = [key(prefix + name), f"`POLLER_{(prefix + name).upper()}`"]
        cells += [type_name(field.annotation), default_text(field), meaning]
        if "env" not in headings:
            del cells[1]
        lines.append(_row(cells))
    return lines


def render_config() -> str:
    """Three tables: top-level keys, the keys of a cluster, the single-cluster env shortcut."""
    top = {n: f for n, f in Settings.model_fields.items() if n not in _TABLES}
    lines = ["Top-level keys (file, or env `POLLER_<KEY>`, which wins):", ""]
    lines += _table(top, lambda n: f"`{n}`")
    lines += ["", "Keys of one `[clusters.NAME]` table:", ""]
    lines += _table(
        ClusterSettings.model_fields,
        lambda n: f"`{n}`",
        headings=("key", "type", "default", "meaning"),
    )
    lines += ["", "One cluster by environment alone (set `POLLER_ONTAP_URL` to use it):", ""]
    lines += _table(EnvCluster.model_fields, lambda n: f"`{n}`", prefix="ontap_")
    return "\n".join(lines) + "\n"


def render_metrics() -> str:
    """One row per instrument of ``Metrics``: name as scraped, type, labels, help."""
    lines = [_row(["metric", "type", "labels", "meaning"]), _row(["---"] * 4)]
    for instrument in vars(Metrics()).values():
        if not isinstance(instrument, MetricWrapperBase):
            continue
        labels = ", ".join(f"`{label}`" for label in instrument._labelnames) or "—"
        for described in instrument.describe():
            suffix = "_total" if described.type == "counter" else ""
            name = f"`{described.name}{suffix}`"
            lines.append(_row([name, described.type, labels, described.documentation]))
    return "\n".join(lines) + "\n"


BLOCKS: Final[dict[str, Callable[[], str]]] = {"config": render_config, "metrics": render_metrics}


def _block_pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN GENERATED {name}[^\n]*-->\n)(.*?)(<!-- END GENERATED {name} -->)", re.DOTALL
    )


def render_document(text: str) -> str:
    """``text`` with every generated block replaced by what the code says now."""
    for name, render in BLOCKS.items():
        pattern = _block_pattern(name)
        if not pattern.search(text):
            raise ValueError(f"docs: no generated block {name!r} found")
        text = pattern.sub(functools.partial(_fill, body=render()), text)
    return text


def _fill(match: re.Match[str], *, body: str) -> str:
    return f"{match[1]}\n{body}\n{match[3]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m poller.docs", description="Regenerate the tables of docs/operations.md."
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale")
    parser.add_argument("--path", type=Path, default=OPERATIONS_MD, help="the file to update")
    args = parser.parse_args(argv)
    current = args.path.read_text(encoding="utf-8")
    rendered = render_document(current)
    if args.check:
        if rendered != current:
            print(f"{args.path} is stale: run python -m poller.docs", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
