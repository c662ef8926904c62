"""The documentation runs: every ``python`` block of README.md and docs/*.md, as pasted in
an empty directory, where the document's blocks whose first line names a file
(``# my_model.yaml``, ``# myblocks.py``; in a YAML file after Hydra's ``# @package``
header, which must come first) were written first."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from .cli_helpers import DOCS, ROOT

FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)  # indented too
NAMED = re.compile(r"#\s*([\w./-]+\.(?:py|yaml|yml|toml|json|txt))")
README_MAX_LINES = 300

# Runs each snippet of each document in one fresh process (torch is imported once): every
# snippet in an empty directory of its own holding the document's files, with that
# directory first on sys.path (as a pasted snippet has it) and a namespace of its own; the
# modules it imported from there are forgotten afterwards.
RUNNER = """
import json, os, sys, tempfile, traceback
from pathlib import Path
jobs = json.loads(sys.stdin.read())
out = {}
for doc, (files, snippets) in jobs.items():
    out[doc] = []
    for line, code in snippets:
        here = Path(tempfile.mkdtemp(prefix="snippet-"))
        for name, text in files.items():
            (here / name).parent.mkdir(parents=True, exist_ok=True)
            (here / name).write_text(text)
        os.chdir(here)
        sys.path.insert(0, str(here))
        before = set(sys.modules)
        try:
            exec(compile(code, f"{doc}:{line}", "exec"), {"__name__": "__main__"})
            error = None
        except BaseException:
            error = traceback.format_exc(limit=-4)
        finally:
            sys.path.remove(str(here))
            for name in set(sys.modules) - before:
                if str(here) in str(getattr(sys.modules[name], "__file__", "") or ""):
                    del sys.modules[name]
        out[doc].append([line, error])
print(json.dumps(out))
"""


def parse(text: str) -> tuple[dict[str, str], list[tuple[int, str]]]:
    """A document's files (blocks whose first line names one) and its python snippets, with
    the line each starts on."""
    files: dict[str, str] = {}
    snippets: list[tuple[int, str]] = []
    for m in FENCE.finditer(text):
        lang, body = m.group(2), textwrap.dedent(m.group(3))
        head = body.split("\n", 2)
        if head[0].startswith("# @package") and len(head) > 1:  # Hydra's header comes first
            head = head[1:]
        named = NAMED.fullmatch(head[0].strip())
        if named:
            files[named.group(1)] = body
        elif lang == "python":
            snippets.append((text.count("\n", 0, m.start()) + 2, body))
    return files, snippets


def test_parse_tells_files_from_snippets() -> None:
    text = "a\n```yaml\n# conf/m.yaml\nx: 1\n```\n```python\nprint(1)\n```\n```bash\nls\n```\n"
    text += "1. a step\n\n   ```python\n   # m.py\n   X = 1\n   ```\n"
    files, snippets = parse(text)
    assert files == {"conf/m.yaml": "# conf/m.yaml\nx: 1\n", "m.py": "# m.py\nX = 1\n"}
    assert snippets == [(7, "print(1)\n")]


@pytest.fixture(scope="module")
def ran() -> dict[str, list]:
    jobs = {str(doc.relative_to(ROOT)): parse(doc.read_text()) for doc in DOCS}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


@pytest.mark.parametrize("doc", [str(d.relative_to(ROOT)) for d in DOCS])
def test_every_python_block_runs_as_pasted(ran: dict[str, list], doc: str) -> None:
    failed = [f"{doc}:{line}\n{error}" for line, error in ran[doc] if error is not None]
    assert not failed, "\n".join(failed)


def test_the_readme_is_short_and_links_every_document() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for doc in DOCS[1:]:
        assert f"(docs/{doc.name})" in text, doc.name
