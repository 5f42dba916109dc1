#!/usr/bin/env python3
"""Generates helm/nixgate/README.md from ci/README.tmpl.md and the `# --` comments of
values.yaml (helm-docs' convention, without the Go tool: Python 3 + PyYAML, no network).

In values.yaml, a comment block starting with `# -- ` right above a key describes that key;
following `#` lines continue it; `# -- (type) text` overrides the inferred type. A described
key is one row of the table, even when its value is a mapping (e.g. `resources`: the whole
default is shown). An undescribed mapping is a section: its keys are listed one by one.
Every other key (a scalar or a list) must be described; `--check` fails when one is not or
when README.md is not what this script writes.

    helm/nixgate/ci/gen_readme.py           # rewrite README.md
    helm/nixgate/ci/gen_readme.py --check   # exit 1 if README.md is stale or a value undescribed
"""
import json
import os
import re
import sys

import yaml

CHART = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
VALUES = os.path.join(CHART, "values.yaml")
TEMPLATE = os.path.join(CHART, "ci", "README.tmpl.md")
README = os.path.join(CHART, "README.md")

KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(\s|$)")
COMMENT = re.compile(r"^\s*#( ?)(.*)$")


def parse(path=VALUES):
    """Rows (dotted key, type, default, description or None), in file order."""
    with open(path) as f:
        text = f.read()
    data = yaml.safe_load(text)
    rows = []
    stack = []  # (indent, key) of the open sections
    skip_below = None  # indent of a row whose nested lines belong to its value
    desc = None  # the `# --` block being read
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            desc = None
            continue
        indent = len(line) - len(line.lstrip())
        if skip_below is not None:
            if indent > skip_below or stripped.startswith("- "):
                continue
            skip_below = None
        c = COMMENT.match(line)
        if c:
            body = c.group(2)
            if body.startswith("-- ") or body == "--":
                desc = [body[3:].strip()]
            elif desc is not None:
                desc.append(body.strip())
            continue
        m = KEY.match(line)
        if not m:
            desc = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path_ = [k for _, k in stack] + [m.group(2)]
        value = data
        for k in path_:
            value = value[k]
        text_ = " ".join(d for d in desc if d) if desc else None
        desc = None
        if isinstance(value, dict) and value and text_ is None:
            stack.append((indent, m.group(2)))
            continue
        typ = type_of(value)
        if text_:
            t = re.match(r"^\((\w[\w ]*)\)\s*(.*)$", text_)
            if t:
                typ, text_ = t.group(1), t.group(2)
        rows.append((".".join(path_), typ, value, text_))
        skip_below = indent
    return rows


def type_of(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "object"
    return "null"


def cell(s):
    return s.replace("|", "\\|")


def table(rows):
    out = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for key, typ, value, text in rows:
        default = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        out.append(f"| `{key}` | {typ} | `{cell(default)}` | {cell(text or '')} |")
    return "\n".join(out)


def undocumented(rows=None):
    return [key for key, _, _, text in (rows if rows is not None else parse()) if not text]


def render():
    with open(os.path.join(CHART, "Chart.yaml")) as f:
        chart = yaml.safe_load(f)
    with open(TEMPLATE) as f:
        tmpl = f.read()
    subst = {
        "chart.name": chart["name"],
        "chart.version": str(chart["version"]),
        "chart.appVersion": str(chart["appVersion"]),
        "chart.description": chart["description"],
        "values": table(parse()),
    }
    out = re.sub(r"\{\{ ([\w.]+) \}\}", lambda m: subst[m.group(1)], tmpl)
    return out


def main():
    rows = parse()
    missing = undocumented(rows)
    if missing:
        print("values without a `# --` description: " + ", ".join(missing), file=sys.stderr)
    text = render()
    if "--check" in sys.argv[1:]:
        with open(README) as f:
            stale = f.read() != text
        if stale:
            print("helm/nixgate/README.md is stale: run helm/nixgate/ci/gen_readme.py", file=sys.stderr)
        sys.exit(1 if stale or missing else 0)
    with open(README, "w") as f:
        f.write(text)
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
