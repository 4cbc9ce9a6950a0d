"""mkdocs hooks for the documentation site (mkdocs.yml: ``hooks``).

* The home page is README.md, with its links into ``docs/`` made relative to the site.
* :class:`RstToMarkdown` is a griffe extension (mkdocs.yml: mkdocstrings' ``extensions``) that rewrites
  the reStructuredText in docstrings to the Markdown the site renders: roles (``:class:`~a.B```) to code,
  ``:math:`` and ``.. math::`` to MathJax, literal-block ``::`` to ``:``, simple ``===`` tables to code.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|attr|mod|exc|obj|const):`~?([^`]+)`")
MATH_ROLE = re.compile(r":math:`([^`]+)`")


def on_files(files, config):
    """Add the README as ``index.md``."""
    readme = (ROOT / "README.md").read_text()
    readme = re.sub(r"\]\(docs/", "](", readme)
    files.append(File.generated(config, "index.md", content=readme))
    return files


def _role(match: re.Match) -> str:
    target = match.group(1)
    text = target.rsplit(".", 1)[-1] if match.group(0).split("`")[1].startswith("~") else target
    return f"`{text}`"


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with its reStructuredText constructs rewritten as Markdown."""
    text = MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    text = ROLE.sub(_role, text)
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(".. math::"):  # a math block: its indented lines
            indent = len(line) - len(line.lstrip())
            body = [stripped[len(".. math::"):].strip()]
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                body.append(lines[i].strip())
                i += 1
            out += ["", "$$", *[b for b in body if b], "$$", ""]
            continue
        if re.fullmatch(r"=+( +=+)+", stripped):  # a simple table: three rules; shown as preformatted text
            end, rules = i, 0
            while end < len(lines) and rules < 3:
                rules += bool(re.fullmatch(r"=+( +=+)+", lines[end].strip()))
                end += 1
            out += ["```text", *lines[i:end], "```"]
            i = end
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            line = line[:-1]
        out.append(line)
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring with :func:`rst_to_markdown` once it is loaded."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
