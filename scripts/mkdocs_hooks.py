"""MkDocs hook: include an example DAG's snippet between ``# [START name]`` and ``# [END name]``.

In a docs page, a line ``<!-- example: dags_examples/example_model_blessing.py howto_eval_config -->``
becomes a Python code block with the lines between those markers in that file (markers dropped,
common indentation removed). A missing file or marker fails the build: the docs show the code the
tests run, never a stale copy.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parent.parent
DIRECTIVE = re.compile(r"^<!-- example: (?P<path>\S+) (?P<name>[\w.-]+) -->$", re.MULTILINE)


def snippet(path: str, name: str) -> str:
    source = ROOT / path
    if not source.is_file():
        raise PluginError(f"Example file {path!r} does not exist (from '<!-- example: {path} {name} -->').")
    lines = source.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == f"# [START {name}]"]
    ends = [i for i, line in enumerate(lines) if line.strip() == f"# [END {name}]"]
    if len(starts) != 1 or len(ends) != 1 or ends[0] <= starts[0]:
        raise PluginError(f"{path} needs exactly one '# [START {name}]' and, after it, one '# [END {name}]'.")
    body = [line for line in lines[starts[0] + 1 : ends[0]] if not re.match(r"\s*# \[(START|END) ", line)]
    return "```python\n" + textwrap.dedent("\n".join(body)).strip("\n") + "\n```"


def on_page_markdown(markdown: str, **_: Any) -> str:
    return DIRECTIVE.sub(lambda m: snippet(m["path"], m["name"]), markdown)
