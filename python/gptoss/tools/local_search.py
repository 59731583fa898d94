"""A search backend over a local folder of markdown, text and HTML files (BM25 with ``bm25s``).

    backend = LocalSearchBackend("docs/")          # indexes docs/**/*.{md,txt,html,...}
    BrowserTool(backend).search("sandbox limits")

Pages get URLs ``file://{source}/{path in the folder}``, so the model sees a site named after the
folder (`source`) and relative links between the documents become links it can open. Only
indexed documents can be opened: a URL outside the index (another file of the host, the web)
is refused, so the browser cannot be used to read the machine's files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Optional, Sequence
from urllib.parse import quote, unquote, urlparse

from .backends import VIEW_SOURCE_PREFIX, BackendError
from .pages import (PageContents, SearchResult, process_html, process_markdown, process_text,
                    search_results_page, strip_links, wrap_lines)

__all__ = ["LocalSearchBackend"]

_KINDS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text",
          ".rst": "text", ".html": "html", ".htm": "html"}
_PROCESS = {"markdown": process_markdown, "text": process_text, "html": process_html}
_MAX_FILE_BYTES = 8 << 20
_SUMMARY_CHARS = 200
_TOP_LINES = 8


class LocalSearchBackend:
    """BM25 search over the documents of `folder` (recursively; hidden entries skipped).

    source: the site name in the pages' URLs (default: the folder's name).
    extensions: which files to index (default: .md .markdown .txt .text .rst .html .htm).
    """

    def __init__(self, folder: str, *, source: Optional[str] = None,
                 extensions: Optional[Iterable[str]] = None):
        try:
            import bm25s
            import html2text  # noqa: F401 - pages need them; say so now
            import lxml  # noqa: F401
        except ImportError as e:
            raise ImportError(f"LocalSearchBackend needs bm25s, html2text and lxml "
                              f"(pip install 'gptoss[tools]'): {e}") from e
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ValueError(f"LocalSearchBackend: {folder!r} is not a folder")
        self.root = root.resolve()
        name = source or self.root.name or "local"
        self.source = re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-").lower() or "local"
        exts = {e if e.startswith(".") else "." + e for e in (extensions or _KINDS)}
        unknown = exts - set(_KINDS)
        if unknown:
            raise ValueError(f"LocalSearchBackend: cannot index {sorted(unknown)} files "
                             f"(known: {', '.join(sorted(_KINDS))})")
        self.pages: dict[str, PageContents] = {}  # url -> page
        self.paths: dict[str, Path] = {}          # url -> file
        for path in self._files(exts):
            url = self.url_of(path)
            raw = path.read_bytes()[:_MAX_FILE_BYTES].decode("utf-8", "replace")
            page = _PROCESS[_KINDS[path.suffix.lower()]](raw, url, None, display_urls=False)
            if not page.title:
                page.title = path.name
            self.pages[url] = page
            self.paths[url] = path
        self._urls = list(self.pages)
        self._tokenizer = bm25s.tokenization.Tokenizer(stopwords="en")
        self._index = None
        if self._urls:
            corpus = [f"{p.title}\n{strip_links(p.text)}" for p in self.pages.values()]
            tokens = self._tokenizer.tokenize(corpus, return_as="tuple", show_progress=False)
            self._index = bm25s.BM25()
            self._index.index(tokens, show_progress=False)

    def _files(self, exts: set[str]) -> list[Path]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                p = Path(dirpath, f)
                if not f.startswith(".") and p.suffix.lower() in exts and p.is_file():
                    out.append(p)
        return out

    def url_of(self, path: Path) -> str:
        rel = path.resolve().relative_to(self.root).as_posix()
        return f"file://{self.source}/{quote(rel)}"

    def __len__(self) -> int:
        return len(self.pages)

    # ------------------------------------------------------------------ SearchBackend
    def search(self, query: str, topn: int) -> PageContents:
        results: list[SearchResult] = []
        terms = self._terms(query)
        if self._index is not None and terms:
            q = self._tokenizer.tokenize([query], update_vocab=False, return_as="ids",
                                         show_progress=False)
            k = min(max(int(topn), 1), len(self._urls))
            docs, scores = self._index.retrieve(q, k=k, show_progress=False)
            for i, s in zip(docs[0], scores[0]):
                if s <= 0:
                    continue
                url = self._urls[int(i)]
                page = self.pages[url]
                line, summary = self._best_passage(page, terms)
                # Opening a result shows its best passage when that is below the first lines.
                results.append(SearchResult(page.title, url, summary,
                                            line if line > _TOP_LINES else None))
        return search_results_page(query, results)

    def fetch(self, url: str) -> PageContents:
        view_source = url.startswith(VIEW_SOURCE_PREFIX)
        plain = url[len(VIEW_SOURCE_PREFIX):] if view_source else url
        page = self.pages.get(plain) or self.pages.get(self._normalize(plain) or "")
        if page is None:
            raise BackendError(f"`{plain}` is not a document of the local index `{self.source}` "
                               f"(its pages are file://{self.source}/...)")
        if not view_source:
            return page
        raw = self.paths[page.url].read_bytes()[:_MAX_FILE_BYTES].decode("utf-8", "replace")
        return process_text(raw, VIEW_SOURCE_PREFIX + page.url, page.title)

    def _normalize(self, url: str) -> Optional[str]:
        """The index URL of `url` given with another spelling (quoting, ./, a bare path)."""
        u = urlparse(url)
        if u.scheme not in ("", "file") or (u.netloc and u.netloc != self.source):
            return None
        rel = os.path.normpath(unquote(u.path).lstrip("/"))
        return f"file://{self.source}/{quote(rel)}"  # (only indexed pages are served)

    # ------------------------------------------------------------------ snippets
    def _terms(self, query: str) -> list[str]:
        stop = set(self._tokenizer.stopwords or ())
        return [t for t in dict.fromkeys(re.findall(r"(?u)\b\w\w+\b", query.lower()))
                if t not in stop]

    def _best_passage(self, page: PageContents, terms: Sequence[str]) -> tuple[int, str]:
        """The display line that matches most of the query's terms (rarer terms count more),
        and the text from it on as the result's summary."""
        lines = wrap_lines(page.text)
        words = [set(re.findall(r"(?u)\b\w\w+\b", strip_links(line).lower())) for line in lines]
        df = {t: sum(t in w for w in words) for t in terms}
        best, best_score = 0, 0.0
        for i, w in enumerate(words):
            score = sum(1.0 / df[t] for t in terms if t in w)
            if score > best_score:
                best, best_score = i, score
        text = " ".join(strip_links(line).strip() for line in lines[best:best + 4])
        text = re.sub(r"\s+", " ", text).strip()
        if len(text) > _SUMMARY_CHARS:
            text = text[:_SUMMARY_CHARS].rsplit(" ", 1)[0] + " ..."
        return best, text
