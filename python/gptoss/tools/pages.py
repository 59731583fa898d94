"""Pages as the browser tool shows them: plain text with link marks.

A page's text is what the model reads, line by line. Every link becomes a mark
``【{id}†{text}】`` (same site) or ``【{id}†{text}†{domain}】`` (another site), whose id the model
passes to ``browser.open``; images become ``[Image {n}: {alt}]``. The brackets 【 】 are reserved
for marks: page text containing them gets 〖 〗 instead, so a page cannot forge a link or a
citation. HTML is turned into text with html2text (the layout the model was trained on), markdown
keeps its layout with its links turned into marks, plain text stays as it is.
"""

from __future__ import annotations

import html as html_lib
import re
import textwrap
from dataclasses import dataclass, field
from typing import Optional, Sequence
from urllib.parse import urljoin, urlparse

__all__ = ["PageContents", "Extract", "SearchResult", "process_html", "process_markdown",
           "process_text", "search_results_page", "wrap_lines", "strip_links", "domain_of"]

_RESERVED = {"【": "〖", "】": "〗", "◼": "◾", "\u200b": ""}
_RESERVED_RE = re.compile("|".join(map(re.escape, _RESERVED)))
_SMP_RE = re.compile(r"[\U00010000-\U0001FFFF]")  # lxml.html cannot parse these
_SUP_RE = re.compile(r"<sup( [^>]*)?>([\w\-]+)</sup>")
_SUB_RE = re.compile(r"<sub( [^>]*)?>([\w\-]+)</sub>")
_TAGS_BETWEEN_WORDS_RE = re.compile(r"(?<=\w)((<[^>]*>)+)(?=\w)")
_ANCHOR_THEN_SPACE_RE = re.compile(r"(【\@[^】]+】)(\s+)")
_BLANK_LINE_RE = re.compile(r"^\s+$", flags=re.MULTILINE)
_MANY_NEWLINES_RE = re.compile(r"\n(\s*\n)+")
_IMAGE_MARK_RE = re.compile(r"【\@([^】]+)】")

_PARTIAL_HEAD_LINK = re.compile(r"^[^【】]*】")
_PARTIAL_TAIL_LINK = re.compile(r"【\d*(?:†(?P<content>[^†】]*)(?:†[^†】]*)?)?$")
_LINK = re.compile(r"【\d+†(?P<content>[^†】]+)(?:†[^†】]+)?】")


@dataclass
class Extract:
    """A search-result snippet or a find match: where it points and at which line."""

    url: str
    text: str
    title: str
    line_idx: Optional[int] = None


@dataclass
class PageContents:
    """A page: its text (with link marks), title, the link ids' URLs, and for search and find
    result pages the snippet behind each id."""

    url: str
    text: str
    title: str
    urls: dict[str, str] = field(default_factory=dict)
    snippets: Optional[dict[str, Extract]] = None


@dataclass
class SearchResult:
    """One hit of a search backend."""

    title: str
    url: str
    summary: str = ""
    line_idx: Optional[int] = None  # the most relevant line of the page, when known


def domain_of(url: str) -> str:
    """The host part of `url` ('' when there is none)."""
    if "://" not in url and not url.startswith("//"):
        url = "http://" + url
    return urlparse(url).netloc


def _reserved(text: str) -> str:
    return _RESERVED_RE.sub(lambda m: _RESERVED[m.group(0)], text)


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\n", " "))


def _header(url: str, display_urls: bool) -> str:
    return f"\nURL: {url}\n" if display_urls else ""


class _Links:
    """Numbers links by first appearance and writes their marks."""

    def __init__(self, page_url: str):
        self.page_domain = domain_of(page_url) if page_url else ""
        self.page_url = page_url
        self.urls: dict[str, str] = {}
        self._ids: dict[str, str] = {}

    def mark(self, href: str, text: str) -> Optional[str]:
        """The mark for a link, or None when the link leads nowhere the browser can go."""
        try:
            target = urljoin(self.page_url, href)
            domain = domain_of(target) if "://" in target else ""
        except ValueError:
            return None
        if not domain:
            return None
        target = target.replace("arxiv.org", "ar5iv.org")  # arXiv's HTML rendering
        link_id = self._ids.get(target)
        if link_id is None:
            link_id = self._ids[target] = str(len(self.urls))
            self.urls[link_id] = target
        text = text.replace("†", "‡")  # † separates a mark's fields
        return f"【{link_id}†{text}】" if domain == self.page_domain else f"【{link_id}†{text}†{domain}】"


def _replace_with_text(node, text: str) -> None:
    """Put `text` (and the node's tail) where `node` was."""
    parent = node.getparent()
    prev = node.getprevious()
    s = text + (node.tail or "")
    if prev is None:
        parent.text = (parent.text or "") + s
    else:
        prev.tail = (prev.tail or "") + s
    parent.remove(node)


def _html_to_text(html: str) -> str:
    import html2text

    h = html2text.HTML2Text()
    h.ignore_links = True
    h.ignore_images = True
    h.ignore_tables = True
    h.ignore_emphasis = True
    h.unicode_snob = True
    h.body_width = 0  # the browser wraps lines itself
    return h.handle(html).strip()


def process_html(html: str, url: str, title: Optional[str] = None,
                 display_urls: bool = False) -> PageContents:
    """An HTML document as a page. `title` overrides the document's <title>."""
    import lxml.etree
    import lxml.html

    html = _reserved(_SMP_RE.sub("", html))
    if not html.strip():
        html = "<html></html>"
    root = lxml.html.fromstring(html)
    title_el = root.find(".//title")
    if title:
        page_title = title
    elif title_el is not None:
        page_title = title_el.text or ""
    else:
        page_title = domain_of(url) if url else ""
    links = _Links(url)
    for a in root.findall(".//a[@href]"):
        href = a.attrib["href"]
        if href.startswith(("mailto:", "javascript:")):
            continue
        text = _squash(" ".join(a.itertext())).replace("†", "‡")
        if not _IMAGE_MARK_RE.sub("", text):
            continue  # no text: an image link
        if href.startswith("#"):
            _replace_with_text(a, text)
            continue
        mark = links.mark(href, text)
        if mark is not None:
            _replace_with_text(a, mark)
    for n, img in enumerate(root.findall(".//img")):
        name = img.get("alt", img.get("title"))
        _replace_with_text(img, f"[Image {n}: {name}]" if name else f"[Image {n}]")
    for m in root.findall(".//math"):
        _replace_with_text(m, "")
    clean = lxml.etree.tostring(root, encoding="UTF-8").decode()
    clean = _SUP_RE.sub(r"^{\2}", clean)
    clean = _SUB_RE.sub(r"_{\2}", clean)
    clean = _TAGS_BETWEEN_WORDS_RE.sub(r" \1", clean)  # table cells etc. stay apart
    text = _html_to_text(clean)
    text = _ANCHOR_THEN_SPACE_RE.sub(lambda m: m.group(2) + m.group(1), text)
    text = _BLANK_LINE_RE.sub("", text)
    text = _MANY_NEWLINES_RE.sub("\n\n", text)
    return PageContents(url=url, text=_header(url, display_urls) + text, title=page_title,
                        urls=links.urls)


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_MD_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_MD_TITLE = re.compile(r"^\s{0,3}#\s+(.+?)\s*#*\s*$", re.MULTILINE)


def process_markdown(md: str, url: str, title: Optional[str] = None,
                     display_urls: bool = False) -> PageContents:
    """A markdown document as a page: its layout kept, links as marks, images as
    [Image n: alt]. The title is `title`, else the first ``# heading``."""
    md = _reserved(md)
    if not title:
        m = _MD_TITLE.search(md)
        title = m.group(1).strip() if m else (domain_of(url) if url else "")
    count = [0]

    def image(m: re.Match) -> str:
        n = count[0]
        count[0] += 1
        return f"[Image {n}: {m.group(1)}]" if m.group(1) else f"[Image {n}]"

    md = _MD_IMAGE.sub(image, md)
    links = _Links(url)

    def link(m: re.Match) -> str:
        text, href = _squash(m.group(1)).replace("†", "‡"), m.group(2)
        if href.startswith("#"):
            return text
        return links.mark(href, text) or text

    md = _MD_LINK.sub(link, md)
    md = _MANY_NEWLINES_RE.sub("\n\n", _BLANK_LINE_RE.sub("", md)).strip()
    return PageContents(url=url, text=_header(url, display_urls) + md, title=title,
                        urls=links.urls)


def process_text(text: str, url: str, title: Optional[str] = None,
                 display_urls: bool = False) -> PageContents:
    """A plain-text document as a page (no links)."""
    text = _reserved(text).strip("\n")
    if not title:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        title = first[:80] or (domain_of(url) if url else "")
    return PageContents(url=url, text=_header(url, display_urls) + text, title=title)


def search_results_page(query: str, results: Sequence[SearchResult]) -> PageContents:
    """The page a search shows: one line per result, its link mark then its summary."""
    items = "".join(f"<li><a href='{html_lib.escape(r.url, quote=True)}'>"
                    f"{html_lib.escape(r.title)}</a> {html_lib.escape(r.summary)}</li>"
                    for r in results)
    page = process_html(f"<html><body>\n<h1>Search Results</h1>\n<ul>\n{items}\n</ul>\n"
                        f"</body></html>", url="", title=query, display_urls=True)
    by_url = {r.url.replace("arxiv.org", "ar5iv.org"): r for r in results}
    page.snippets = {}
    for link_id, u in page.urls.items():
        r = by_url.get(u)
        if r is not None:
            page.snippets[link_id] = Extract(url=u, text=r.summary, title=r.title,
                                             line_idx=r.line_idx)
    return page


def wrap_lines(text: str, width: int = 80) -> list[str]:
    """The page's display lines: long lines wrapped at `width`, blank lines kept."""
    out: list[str] = []
    for line in text.split("\n"):
        if line:
            out.extend(textwrap.wrap(line, width=width, replace_whitespace=False,
                                     drop_whitespace=False))
        else:
            out.append("")
    return out


def strip_links(text: str) -> str:
    """`text` with link marks replaced by their text (also marks cut at either end)."""
    text = _PARTIAL_HEAD_LINK.sub("", text)
    text = _PARTIAL_TAIL_LINK.sub(lambda m: m.group("content") or "", text)
    return _LINK.sub(lambda m: m.group("content"), text)
