"""Search backends of the browser tool: one small interface, a local index (`local_search`) and
web search APIs for users with a key (Exa, You.com), spoken over plain HTTPS with the standard
library.

A backend turns a query into a results page and a URL into a page (`pages.PageContents`); the
browser does the rest (stack, views, find). Write your own by implementing `SearchBackend`.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional, Protocol, runtime_checkable

from .pages import PageContents, SearchResult, process_html, search_results_page

__all__ = ["SearchBackend", "BackendError", "ExaBackend", "YouComBackend", "VIEW_SOURCE_PREFIX",
           "web_backend_from_env"]

VIEW_SOURCE_PREFIX = "view-source:"  # open(..., view_source=True) asks for a page's raw source
_USER_AGENT = "gptoss-browser/0.1"


class BackendError(Exception):
    """A search or fetch failed (the browser tells the model)."""


@runtime_checkable
class SearchBackend(Protocol):
    """What the browser needs from a search engine."""

    source: str  # a short name of where results come from ("web", "local")

    def search(self, query: str, topn: int) -> PageContents:
        """The results page for `query`, at most `topn` results (see `search_results_page`)."""
        ...

    def fetch(self, url: str) -> PageContents:
        """The page at `url` (a ``view-source:`` prefix asks for the raw source as text)."""
        ...


class _HTTPBackend:
    """JSON over HTTPS with an API key header."""

    source = "web"
    BASE_URL = ""
    KEY_ENV = ""
    KEY_HEADER = "x-api-key"

    def __init__(self, api_key: Optional[str] = None, *, base_url: Optional[str] = None,
                 timeout: float = 30.0):
        self.api_key = api_key
        self.base_url = (base_url or self.BASE_URL).rstrip("/")
        self.timeout = timeout

    def _key(self) -> str:
        key = self.api_key or os.environ.get(self.KEY_ENV)
        if not key:
            raise BackendError(f"{type(self).__name__} needs an API key (api_key= or the "
                               f"{self.KEY_ENV} environment variable)")
        return key

    def _request(self, method: str, path: str, *, params: Optional[dict] = None,
                 body: Optional[dict] = None) -> Any:
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={
            self.KEY_HEADER: self._key(), "user-agent": _USER_AGENT,
            "accept": "application/json",
            **({"content-type": "application/json"} if data is not None else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")[:500]
            raise BackendError(f"{type(self).__name__} error {e.code}: {text}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise BackendError(f"{type(self).__name__} request failed: {e}") from None


def _strip_view_source(url: str) -> str:
    return url[len(VIEW_SOURCE_PREFIX):] if url.startswith(VIEW_SOURCE_PREFIX) else url


class ExaBackend(_HTTPBackend):
    """Exa (exa.ai): ``POST /search`` and ``POST /contents``; key from ``EXA_API_KEY``."""

    BASE_URL = "https://api.exa.ai"
    KEY_ENV = "EXA_API_KEY"

    def search(self, query: str, topn: int) -> PageContents:
        data = self._request("POST", "/search", body={
            "query": query, "numResults": topn, "contents": {"text": True, "summary": True}})
        results = [SearchResult(r.get("title") or r.get("url", ""), r.get("url", ""),
                                r.get("summary") or "") for r in data.get("results", [])]
        return search_results_page(query, results)

    def fetch(self, url: str) -> PageContents:
        url = _strip_view_source(url)
        data = self._request("POST", "/contents", body={
            "urls": [url], "text": {"includeHtmlTags": True}})
        results = data.get("results") or []
        if not results:
            raise BackendError(f"No contents returned for {url}")
        r = results[0]
        return process_html(r.get("text", ""), url, r.get("title") or None, display_urls=True)


class YouComBackend(_HTTPBackend):
    """You.com: ``GET /v1/search`` and ``POST /v1/contents``; key from ``YDC_API_KEY``."""

    BASE_URL = "https://api.ydc-index.io"
    KEY_ENV = "YDC_API_KEY"
    KEY_HEADER = "X-API-Key"

    def search(self, query: str, topn: int) -> PageContents:
        data = self._request("GET", "/v1/search", params={"query": query, "count": topn})
        res = data.get("results") or {}
        results = []
        for r in res.get("web", []):
            snippets = r.get("snippets") or []
            summary = " ".join(snippets) if isinstance(snippets, list) else str(snippets)
            results.append(SearchResult(r.get("title", ""), r.get("url", ""),
                                        summary or r.get("description", "")))
        for r in res.get("news", []):
            results.append(SearchResult(r.get("title", ""), r.get("url", ""),
                                        r.get("description", "")))
        return search_results_page(query, results)

    def fetch(self, url: str) -> PageContents:
        url = _strip_view_source(url)
        data = self._request("POST", "/v1/contents", body={
            "urls": [url], "livecrawl_formats": "html"})
        if not data:
            raise BackendError(f"No contents returned for {url}")
        r = data[0]
        if "html" not in r:
            raise BackendError(f"No HTML returned for {url}")
        return process_html(r.get("html") or "", url, r.get("title") or None, display_urls=True)


def web_backend_from_env() -> SearchBackend:
    """The web backend the environment has a key for: BROWSER_BACKEND=youcom|exa picks one,
    else You.com if YDC_API_KEY is set, else Exa if EXA_API_KEY is."""
    choice = os.environ.get("BROWSER_BACKEND", "").strip().lower()
    if choice and choice not in ("youcom", "exa"):
        raise ValueError(f"BROWSER_BACKEND must be 'youcom' or 'exa', got {choice!r}")
    if not choice:
        choice = "youcom" if os.environ.get("YDC_API_KEY") else \
            "exa" if os.environ.get("EXA_API_KEY") else ""
    if not choice:
        raise ValueError("the browser needs a search backend: a local index "
                         "(LocalSearchBackend(folder), gptoss chat --browser-index FOLDER) or a "
                         "web search API key in YDC_API_KEY (You.com) or EXA_API_KEY (Exa)")
    return YouComBackend() if choice == "youcom" else ExaBackend()
