"""A small, safe Markdown renderer for a project's instructions (``project init --instructions FILE``).

Everything is HTML-escaped first, so no tag, attribute or script in the source reaches the page;
then a subset of Markdown is turned into a fixed set of tags: headings (``#``), paragraphs, bullet
and numbered lists, ``**bold**``, ``*italic*``/``_italic_``, ``code``, fenced code blocks and
``[links](https://...)`` (http, https and mailto only; anything else stays text).
"""

from __future__ import annotations

import html
import re

_LINK = re.compile(r"\[([^\]\n]+)\]\(((?:https?://|mailto:)[^)\s]+)\)")
_CODE = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_ITALIC = re.compile(r"(?<![\w*])[*_](?=\S)(.+?)(?<=\S)[*_](?![\w*])")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+(.*)$")


def _inline(text: str) -> str:
    """One line of source: escaped, then code spans (left alone), links, bold, italics."""
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out.append(_styled(text[pos:m.start()]))
        out.append(f"<code>{html.escape(m.group(1))}</code>")
        pos = m.end()
    out.append(_styled(text[pos:]))
    return "".join(out)


def _styled(text: str) -> str:
    parts, pos = [], 0
    for m in _LINK.finditer(text):
        parts.append(_emphasis(html.escape(text[pos:m.start()])))
        url = html.escape(m.group(2), quote=True)
        label = _emphasis(html.escape(m.group(1)))
        parts.append(f'<a href="{url}" target="_blank" rel="noopener noreferrer">{label}</a>')
        pos = m.end()
    parts.append(_emphasis(html.escape(text[pos:])))
    return "".join(parts)


def _emphasis(escaped: str) -> str:
    escaped = _BOLD.sub(r"<strong>\1</strong>", escaped)
    return _ITALIC.sub(r"<em>\1</em>", escaped)


def render_markdown(source: str) -> str:
    """HTML for ``source`` (safe to insert into a page: only the tags listed in the module doc)."""
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    html_out: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []
    list_tag = ""

    def flush() -> None:
        nonlocal list_tag
        if paragraph:
            html_out.append("<p>" + "<br>".join(_inline(p) for p in paragraph) + "</p>")
            paragraph.clear()
        if items:
            html_out.append(f"<{list_tag}>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + f"</{list_tag}>")
            items.clear()
            list_tag = ""

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            flush()
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            html_out.append("<pre><code>" + html.escape("\n".join(block)) + "</code></pre>")
            i += 1
            continue
        heading, bullet, numbered = _HEADING.match(line), _BULLET.match(line), _NUMBERED.match(line)
        if not line.strip():
            flush()
        elif heading:
            flush()
            level = min(len(heading.group(1)) + 2, 6)  # inside the page: h3..h6
            html_out.append(f"<h{level}>{_inline(heading.group(2).strip())}</h{level}>")
        elif bullet or numbered:
            tag = "ul" if bullet else "ol"
            if paragraph or (items and list_tag != tag):
                flush()
            list_tag = tag
            items.append((bullet or numbered).group(1))  # type: ignore[union-attr]
        elif items and line.startswith((" ", "\t")):
            items[-1] += " " + line.strip()  # a list item continued on the next line
        else:
            if items:
                flush()
            paragraph.append(line.strip())
        i += 1
    flush()
    return "\n".join(html_out)
