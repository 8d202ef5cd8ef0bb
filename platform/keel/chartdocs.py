"""The chart README's parameter table, generated from values.schema.json so the docs cannot drift.

``python -m keel.chartdocs`` rewrites the table between the markers in charts/keel/README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from keel.config import PROJECT_ROOT

CHART = PROJECT_ROOT / "charts" / "keel"
BEGIN, END = "<!-- parameters:begin -->", "<!-- parameters:end -->"


def _type(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    t = node.get("type", "object")
    return " or ".join(t) if isinstance(t, list) else t


def _default(defaults: Any, path: list[str], nested: bool) -> str:
    node = defaults
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return ""
        node = node[key]
    if isinstance(node, dict) and node and nested:
        return ""  # its leaves have their own rows
    return f"`{json.dumps(node)}`"


def _rows(node: dict[str, Any], root: dict[str, Any], defaults: Any, path: list[str]) -> list[str]:
    if "$ref" in node:
        node = {**root["definitions"][node["$ref"].rsplit("/", 1)[1]], **node}
    name = ".".join(path).replace(".[]", "[]")
    rows = []
    if path:
        desc = node.get("description", "").replace("|", "\\|")
        rows.append(f"| `{name}` | {_type(node)} | {_default(defaults, path, 'properties' in node)} | {desc} |")
    props = node.get("properties")
    if props and not (path and path[-1] == "resources"):
        for key, child in props.items():
            rows += _rows(child, root, defaults, [*path, key])
    items = node.get("items")
    if isinstance(items, dict) and (items.get("properties") or "$ref" in items):
        rows += _rows({**items, "description": ""}, root, None, [*path, "[]"])[1:]
    return rows


def parameter_table(schema: dict[str, Any], defaults: dict[str, Any]) -> str:
    head = ["| Parameter | Type | Default | Description |", "| --- | --- | --- | --- |"]
    return "\n".join(head + _rows(schema, schema, defaults, []))


def main() -> None:
    readme = CHART / "README.md"
    table = parameter_table(json.loads((CHART / "values.schema.json").read_text()),
                            yaml.safe_load((CHART / "values.yaml").read_text()))
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{readme}: markers {BEGIN} / {END} not found")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    print(f"wrote {len(table.splitlines()) - 2} parameters to {Path(readme).relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
