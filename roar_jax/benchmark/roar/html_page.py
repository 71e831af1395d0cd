"""`W/report/index.html` and `summary.md`: one report in two renderings.

A report is a title, intro lines and `Section`s; `page` renders them as one
self-contained HTML page and `markdown` as GitHub markdown, so the two files
always say the same. In the page, figures are embedded as base64 data URIs and the style sheet is inline, so
the single file can be mailed, attached to a review or opened from a bucket
without its folder. Tables come from pandas (`DataFrame.to_html`, escaped).
The page depends only on its inputs (no dates), so an unchanged report is
byte-identical.
"""

import base64
import dataclasses
import html
from typing import Sequence

import pandas as pd

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #444; max-width: 900px; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto;
      font-size: 0.8em; }
.note { color: #444; font-size: 0.9em; }
""".strip()


@dataclasses.dataclass(frozen=True)
class Figure:
  """A PNG to embed: its bytes, its file name in W/report/ (the markdown
  links it by that name) and a caption."""
  png: bytes
  title: str
  caption: str = ""


@dataclasses.dataclass(frozen=True)
class Section:
  """A heading with paragraphs, a bullet list, tables and figures, in that
  order."""
  heading: str
  paragraphs: Sequence[str] = ()
  bullets: Sequence[str] = ()
  tables: Sequence[pd.DataFrame] = ()
  figures: Sequence[Figure] = ()
  preformatted: str | None = None
  level: int = 2  # <h2>, or <h3> for a subsection.


def data_uri(png: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(fig: Figure) -> str:
  out = [f'<figure><img src="{data_uri(fig.png)}" '
         f'alt="{html.escape(fig.title)}">']
  if fig.caption:
    out.append(f"<figcaption>{html.escape(fig.caption)}</figcaption>")
  out.append("</figure>")
  return "".join(out)


def _table(frame: pd.DataFrame) -> str:
  return frame.to_html(index=False, escape=True, border=0, na_rep="–")


def _section(section: Section) -> str:
  h = f"h{section.level}"
  out = [f"<{h}>{html.escape(section.heading)}</{h}>"]
  out += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
  if section.bullets:
    out.append("<ul>" + "".join(f"<li>{html.escape(b)}</li>"
                                for b in section.bullets) + "</ul>")
  out += [_table(t) for t in section.tables]
  out += [_figure(f) for f in section.figures]
  if section.preformatted is not None:
    out.append(f"<pre>{html.escape(section.preformatted)}</pre>")
  return "\n".join(out)


def page(title: str, intro: Sequence[str], sections: Sequence[Section]) -> str:
  """The HTML document (HTML5, UTF-8)."""
  body = [f"<h1>{html.escape(title)}</h1>"]
  body += [f'<p class="note">{html.escape(p)}</p>' for p in intro]
  body += [_section(s) for s in sections]
  return "\n".join([
      "<!DOCTYPE html>", '<html lang="en">', "<head>",
      '<meta charset="utf-8">',
      '<meta name="viewport" content="width=device-width, initial-scale=1">',
      f"<title>{html.escape(title)}</title>", f"<style>\n{_STYLE}\n</style>",
      "</head>", "<body>", *body, "</body>", "</html>", ""])


def markdown_table(frame: pd.DataFrame) -> list[str]:
  """A GitHub pipe table of `frame`'s cells as strings."""
  def cell(v) -> str:
    return str(v).replace("|", "\\|")
  lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |",
           "|" + "---|" * len(frame.columns)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
  return lines


def _markdown_section(section: Section) -> list[str]:
  lines = ["#" * section.level + f" {section.heading}", ""]
  for paragraph in section.paragraphs:
    lines += [paragraph, ""]
  if section.bullets:
    lines += [f"- {b}" for b in section.bullets] + [""]
  for table in section.tables:
    lines += markdown_table(table) + [""]
  for fig in section.figures:
    lines += [f"![{fig.title}]({fig.title})", ""]
    if fig.caption:
      lines += [fig.caption, ""]
  if section.preformatted is not None:
    lines += ["```json", section.preformatted, "```", ""]
  return lines


def markdown(title: str, intro: Sequence[str], sections: Sequence[Section],
             *, strong_first: bool = False) -> str:
  """The same document as GitHub markdown (figures linked by file name).

  Args:
    title: the top heading.
    intro: paragraphs under it.
    sections: the sections, in order.
    strong_first: set the first intro paragraph in bold (a partial report).

  Returns:
    The markdown text.
  """
  lines = [f"# {title}", ""]
  for i, paragraph in enumerate(intro):
    lines += [f"**{paragraph}**" if i == 0 and strong_first else paragraph,
              ""]
  for section in sections:
    lines += _markdown_section(section)
  return "\n".join(lines)
