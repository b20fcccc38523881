#!/usr/bin/env python3
"""Regenerate the key tables of docs/configuration.md from config/src/default.toml.

The default file is the single source: every key with its default and the
comment above it. This script turns it into one Markdown table per TOML
table and replaces the text between the GENERATED markers in
docs/configuration.md. Run it after changing default.toml:

    python3 scripts/gen-config-doc.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "config" / "src" / "default.toml"
DOC = ROOT / "docs" / "configuration.md"
BEGIN, END = "<!-- GENERATED: keys -->", "<!-- END GENERATED -->"

KEY = re.compile(r"^([A-Za-z0-9_]+)\s*=\s*(.*)$")
OPTIONAL = re.compile(r"^# ([a-z0-9_]+) = (.*)$")


def cell(text: str) -> str:
    return text.replace("|", "\\|").strip()


def main() -> None:
    sections: list[tuple[str, list[tuple[str, str, str]]]] = []
    comment: list[str] = []
    block_doc = ""  # doc of the previous key in the same block (no blank line between)
    current: list[tuple[str, str, str]] | None = None
    preamble_done = False
    for raw in SRC.read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            preamble_done = True
            current = []
            sections.append((line.strip("[]"), current))
            comment = []
            continue
        if not preamble_done:
            continue
        if not line:
            comment = []
            block_doc = ""
            continue
        m = OPTIONAL.match(line)
        if m and current is not None and comment:
            current.append((m.group(1), "unset", " ".join(comment)))
            comment = []
            continue
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            if text:
                comment.append(text)
            continue
        m = KEY.match(line)
        if m and current is not None:
            value = m.group(2)
            if value.startswith("[") or value.startswith("{"):
                value = value if len(value) < 60 else value[:57] + "..."
            doc = " ".join(comment) or block_doc
            block_doc = doc
            current.append((m.group(1), value, doc))
            comment = []
    out = []
    first_doc: dict[str, str] = {}
    for name, keys in sections:
        out.append(f"### `[{name}]`\n")
        if not keys:
            out.append("(table header only)\n")
            continue
        out.append("| key | default | meaning |\n| --- | --- | --- |")
        for key, default, doc in keys:
            # Keys repeated in later tables (wss after ws, ssl after tcp) share the first doc.
            doc = doc or first_doc.get(key, "")
            first_doc.setdefault(key, doc)
            out.append(f"| `{key}` | `{cell(default)}` | {cell(doc)} |")
        out.append("")
    generated = "\n".join(out)
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n\n" + generated + "\n" + text[end:])


if __name__ == "__main__":
    main()
