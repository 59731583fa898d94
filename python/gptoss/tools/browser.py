"""The browser tool: ``browser.search``, ``browser.open`` and ``browser.find`` as gpt-oss was
trained to use them.

Every result is a page pushed on a stack; its index is the page's *cursor*, shown in brackets
before the page (``[3] Title (url)``), then a scrollbar line and the page's lines, numbered
``L{n}: ``. The model opens links by the ids of their marks ``【{id}†text】``, scrolls with ``open``
and a ``loc``, and cites lines as ``【{cursor}†L{start}-L{end}】`` (`citations` resolves those).
The text of every view is exactly what the model sees; errors are returned as text, since the
model is to read them and recover.

    browser = BrowserTool(LocalSearchBackend("docs/"))
    print(browser.search("bubblewrap sandbox"))
    print(browser.open(0))          # the first result
    print(browser.find("namespace"))
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Any, Optional, Union
from urllib.parse import quote, unquote

from .backends import BackendError, SearchBackend, VIEW_SOURCE_PREFIX
from .pages import Extract, PageContents, domain_of, strip_links, wrap_lines

__all__ = ["BrowserTool", "Citation", "ToolUsageError"]

_CITATION = re.compile(r"【(?P<cursor>\d+)†(?P<content>[^†】]+)(?:†[^†】]+)?】")
_CITED_LINES = re.compile(r"^L(\d+)(?:-L(\d+))?$")
_PARTIAL_CITATION = re.compile(r"【\d*(?:†(?P<content>[^†】]*)(?:†[^†】]*)?)?$")
_FUNCTIONS = ("search", "open", "find")


class ToolUsageError(Exception):
    """The model used the browser wrongly (bad cursor, link id, location): told as text."""


def _truncate(text: str, n: int = 1024) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


@dataclass
class Citation:
    """A citation ``【cursor†L{line_start}-L{line_end}】`` in the model's text, resolved: the page
    it points at and the cited lines (as the model saw them, without the ``L{n}:`` prefix)."""

    start: int  # offsets of the mark in the text
    end: int
    cursor: int
    line_start: int
    line_end: int
    url: str
    title: str
    text: str


class BrowserTool:
    """A browser over a `SearchBackend`. One instance per conversation (it holds the page stack).

    tokenizer: counts tokens to size a view to `view_tokens` (the chat passes the model's; without
    one a view holds about 4 characters per token). max_search_results: results asked of the
    backend per search (the model's ``topn`` is ignored, as in the reference tool).
    """

    name = "browser"

    def __init__(self, backend: SearchBackend, *, tokenizer: Any = None, view_tokens: int = 1024,
                 max_search_results: int = 20):
        if view_tokens < 16:
            raise ValueError(f"view_tokens must be at least 16, got {view_tokens}")
        self.backend = backend
        self.tokenizer = tokenizer
        self.view_tokens = view_tokens
        self.max_search_results = max_search_results
        self.pages: dict[str, PageContents] = {}  # url -> page, for revisits
        self.page_stack: list[PageContents] = []  # cursor -> page
        self._lock = threading.RLock()

    @property
    def description(self) -> str:
        """The harmony tool description (openai-harmony's, which says sources=web)."""
        from ..harmony import BROWSER

        return BROWSER.description or ""

    # ------------------------------------------------------------------ the model's functions
    def search(self, query: str, topn: int = 10, top_n: int = 10,
               source: Optional[str] = None) -> str:
        """Search and show the results page."""
        del topn, top_n, source
        with self._lock:
            try:
                return self._search(str(query))
            except (ToolUsageError, BackendError) as e:
                return str(e)

    def open(self, id: Union[int, str] = -1, cursor: int = -1, loc: int = -1,  # noqa: A002
             num_lines: int = -1, view_source: bool = False,
             source: Optional[str] = None) -> str:
        """Open link `id` of the page at `cursor` (default: the last), a URL (`id` a str), or,
        without `id`, scroll the page to line `loc`."""
        del source
        with self._lock:
            try:
                return self._open(id, cursor, loc, num_lines, view_source)
            except (ToolUsageError, BackendError) as e:
                return str(e)

    def find(self, pattern: str, cursor: int = -1) -> str:
        """Case-insensitive exact matches of `pattern` in the page at `cursor`."""
        with self._lock:
            try:
                return self._find(str(pattern), cursor)
            except (ToolUsageError, BackendError) as e:
                return str(e)

    def call(self, function: str, arguments: str) -> str:
        """Run ``browser.{function}`` with the model's JSON `arguments`: the text it sees."""
        if function not in _FUNCTIONS:
            return json.dumps({"error": f"Unknown function: {function}"})
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            return json.dumps({"error": "Invalid function arguments"})
        for k in ("id", "cursor", "loc", "num_lines", "topn"):
            v = args.get(k)
            if isinstance(v, float) and v.is_integer():  # JSON numbers may come as 3.0
                args[k] = int(v)
        try:
            return getattr(self, function)(**args)
        except TypeError as e:  # unknown or missing arguments
            return json.dumps({"error": f"Invalid function arguments: {e}"})

    # ------------------------------------------------------------------ state
    @property
    def current_cursor(self) -> int:
        return len(self.page_stack) - 1

    def _push(self, page: PageContents) -> None:
        if page.url:  # search pages have no URL: they are reached by cursor only
            self.pages[page.url] = page
        self.page_stack.append(page)

    def page(self, cursor: int = -1) -> PageContents:
        """The page at `cursor` (-1: the last one)."""
        if self.current_cursor < 0:
            raise ToolUsageError("No pages to access!")
        if cursor == -1 or cursor == self.current_cursor:
            return self.page_stack[-1]
        if not isinstance(cursor, int) or isinstance(cursor, bool):
            raise ToolUsageError(f"`cursor` should be an integer, not `{type(cursor).__name__}`")
        if not 0 <= cursor <= self.current_cursor:
            raise ToolUsageError(f"Cursor `{cursor}` is out of range. "
                                 f"Available cursor indices: [0 - {self.current_cursor}].")
        return self.page_stack[cursor]

    # ------------------------------------------------------------------ implementation
    def _search(self, query: str) -> str:
        try:
            page = self.backend.search(query, self.max_search_results)
        except Exception as e:  # noqa: BLE001 - any backend failure is the model's to read
            raise BackendError(f"Error during search for `{query}`: {_truncate(str(e))}") from e
        self._push(page)
        return self._show_or_pop(0, -1)

    def _open(self, id: Union[int, str], cursor: int, loc: int, num_lines: int,  # noqa: A002
              view_source: bool) -> str:
        snippet: Optional[Extract] = None
        stay = False
        refresh = False
        if isinstance(id, str):
            url, refresh = id, True
        else:
            current = self.page(cursor)
            if not isinstance(id, int) or isinstance(id, bool):
                raise ToolUsageError(f"Invalid link id `{id}`.")
            if id >= 0:
                try:
                    url = current.urls[str(id)]
                except KeyError:
                    raise ToolUsageError(f"Invalid link id `{id}`.") from None
                snippet = (current.snippets or {}).get(str(id))
            else:
                url, stay = current.url, not view_source
        if view_source:
            url, snippet = VIEW_SOURCE_PREFIX + url, None
        if stay:
            page = current
        elif not refresh and url in self.pages:
            page = self.pages[url]
        else:
            try:
                page = self.backend.fetch(url)
            except Exception as e:  # noqa: BLE001
                raise BackendError(f"Error fetching URL `{_truncate(url)}`: "
                                   f"{_truncate(str(e))}") from e
        self._push(page)
        if loc < 0:
            loc = 0
            if snippet is not None and snippet.line_idx is not None:
                loc = snippet.line_idx - 4 if snippet.line_idx > 4 else snippet.line_idx
        return self._show_or_pop(loc, num_lines)

    def _find(self, pattern: str, cursor: int) -> str:
        page = self.page(cursor)
        if page.snippets is not None:
            raise ToolUsageError("Cannot run `find` on search results page or find results page")
        self._push(find_in_page(pattern.lower(), page))
        return self._show_or_pop(0, -1)

    def _show_or_pop(self, loc: int, num_lines: int) -> str:
        try:
            return self._show(loc, num_lines)
        except ToolUsageError:
            self.page_stack.pop()
            raise

    def _show(self, loc: int, num_lines: int) -> str:
        page = self.page()
        lines = wrap_lines(page.text)
        total = len(lines)
        if loc >= total:
            raise ToolUsageError(f"Invalid location parameter: `{loc}`. "
                                 f"Cannot exceed page maximum of {total - 1}.")
        end = self._end_line(lines, loc, num_lines)
        body = "\n".join(f"L{i}: {line}" for i, line in enumerate(lines[loc:end], start=loc))
        shown_url = _truncate(unquote(page.url))
        header = page.title + (f" ({shown_url})" if shown_url else "")
        header += f"\n**viewing lines [{loc} - {end - 1}] of {total - 1}**\n\n"
        return f"[{self.current_cursor}] {header}{body}"

    def _end_line(self, lines: list[str], loc: int, num_lines: int) -> int:
        """One past the last line shown: `num_lines` lines, or as many as fit `view_tokens`."""
        total = len(lines)
        if num_lines > 0:
            return min(loc + num_lines, total)
        text = "\n".join(f"L{i}: {line}" for i, line in enumerate(lines[loc:], start=loc))
        if len(text) <= self.view_tokens:  # at least one character per token: it all fits
            return total
        cut = self._char_offset_of_token(text, self.view_tokens)
        if cut is None:
            return total
        return min(loc + text[:cut].count("\n") + 1, total)

    def _char_offset_of_token(self, text: str, n: int) -> Optional[int]:
        """Where token `n` of `text` starts (None: the text has no more than n tokens)."""
        tok = self.tokenizer
        if tok is None:
            return n * 4 if len(text) > n * 4 else None
        encode = getattr(tok, "encode_ordinary", None) or (
            lambda s: tok.encode(s, disallowed_special=()))
        span = 8 * (n + 1)
        while True:
            ids = encode(text[:span])
            if len(ids) > n:
                head = tok.decode_bytes(ids[:n]) if hasattr(tok, "decode_bytes") else \
                    tok.decode(ids[:n]).encode()
                return len(head.decode("utf-8", "ignore"))
            if span >= len(text):
                return None
            span *= 2

    # ------------------------------------------------------------------ citations
    def citations(self, text: str) -> list[Citation]:
        """The citations ``【cursor†L{a}(-L{b})?】`` in `text` that point at a page of this
        browser, with the cited lines."""
        out = []
        for m in _CITATION.finditer(text):
            cursor = int(m.group("cursor"))
            lm = _CITED_LINES.match(m.group("content").strip())
            if lm is None or cursor > self.current_cursor:
                continue
            page = self.page_stack[cursor]
            lines = wrap_lines(page.text)
            a = int(lm.group(1))
            b = int(lm.group(2)) if lm.group(2) else a
            out.append(Citation(m.start(), m.end(), cursor, a, b, page.url, page.title,
                                "\n".join(lines[a:b + 1])))
        return out

    def normalize_citations(self, text: str, hide_partial: bool = False
                            ) -> tuple[str, list[dict[str, Any]], bool]:
        """`text` with each citation of a known page replaced by `` ([domain](url)) ``, the
        OpenAI-style ``url_citation`` annotations for them, and whether `text` ends inside an
        unfinished citation (a streaming caller holds such text back)."""
        partial = _PARTIAL_CITATION.search(text) is not None
        if hide_partial and partial:
            text = _PARTIAL_CITATION.sub("", text)
        out: list[str] = []
        annotations: list[dict[str, Any]] = []
        last = 0
        n = 0
        for m in _CITATION.finditer(text):
            out.append(text[last:m.start()])
            n += m.start() - last
            cursor = int(m.group("cursor"))
            url = self.page_stack[cursor].url if cursor <= self.current_cursor else None
            if url:
                domain = domain_of(url) or url
                rep = f" ([{domain}]({url})) "
                annotations.append({"type": "url_citation", "start_index": n,
                                    "end_index": n + len(rep), "title": domain, "url": url})
            else:
                rep = m.group(0)
            out.append(rep)
            n += len(rep)
            last = m.end()
        out.append(text[last:])
        return "".join(out), annotations, partial


def find_in_page(pattern: str, page: PageContents, max_results: int = 50,
                 show_lines: int = 4) -> PageContents:
    """The find-results page: each match's first line and the next few, with a mark whose id
    opens the page at that line."""
    lines = strip_links("\n".join(wrap_lines(page.text))).split("\n")
    chunks: list[str] = []
    snippets: dict[str, Extract] = {}
    i = 0
    while i < len(lines) and len(chunks) < max_results:
        if pattern not in lines[i].lower():
            i += 1
            continue
        k = str(len(chunks))
        snippet = "\n".join(lines[i:i + show_lines])
        chunks.append(f"# 【{k}†match at L{i}】\n{snippet}")
        snippets[k] = Extract(url=page.url, text=snippet, title=f"#{k}", line_idx=i)
        i += show_lines
    text = "\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`"
    return PageContents(url=f"{page.url}/find?pattern={quote(pattern)}",
                        title=f"Find results for text: `{pattern}` in `{page.title}`", text=text,
                        urls={k: page.url for k in snippets}, snippets=snippets)
