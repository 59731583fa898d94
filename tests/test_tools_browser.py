"""The browser tool over a local folder and over web search APIs (served by a local HTTP server
that speaks their protocol): ranking, the exact text of the views the model reads, find,
citations, errors.

The expected texts follow the reference browser (openai/gpt-oss, gpt_oss/tools/simple_browser):
``[cursor] title (url)``, a ``**viewing lines [a - b] of n**`` line, then ``L{i}: `` lines of at
most 80 characters; link marks ``【id†text(†domain)】``; find results ``# 【k†match at L{i}】``. The
HTML page below was run through the reference's page processing once and gave the same text.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("bm25s")
pytest.importorskip("html2text")
pytest.importorskip("lxml")

from fixtures_vocab import o200k_vocab_dir, o200k_vocab_file, tokenizer  # noqa: E402,F401
from gptoss.tools import (BrowserTool, ExaBackend, LocalSearchBackend, SearchBackend,  # noqa: E402
                          YouComBackend)
from gptoss.tools.pages import process_html, wrap_lines  # noqa: E402

SANDBOX_MD = """# Sandbox guide

The python tool runs in a sandbox made with bubblewrap.

## Limits

Memory, CPU time, processes and file size are limited. A process that
exceeds its quota of frobnicators is stopped at once.

See the [overview](../index.md) and the [bubblewrap site](https://github.com/containers/bubblewrap).
"""


@pytest.fixture(scope="module")
def kb(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("kbroot") / "kb"
    (d / "guide").mkdir(parents=True)
    (d / "guide" / "sandbox.md").write_text(SANDBOX_MD)
    (d / "index.md").write_text("# Overview\n\nThis knowledge base describes gptoss. Read the "
                                "[sandbox guide](guide/sandbox.md).\n")
    (d / "cooking.txt").write_text("Recipes\nA good risotto needs arborio rice and patience.\n")
    (d / "birds.html").write_text(
        "<html><head><title>Birds of the fjords</title></head><body><h1>Birds</h1>"
        "<p>The <b>ptarmigan</b> turns white in winter.</p><p>Photo: <img alt='a ptarmigan'>"
        "</p><p>More at <a href='https://birds.example.org/ptarmigan'>the bird atlas</a>.</p>"
        "</body></html>")
    long_lines = [f"Line {i} of the long manual talks about topic number {i}." for i in range(300)]
    long_lines[250] = "Here the manual finally mentions the quixotic xylograph at last."
    (d / "manual.txt").write_text("Long manual\n" + "\n".join(long_lines) + "\n")
    (d / ".hidden.md").write_text("# Hidden\n\nxylograph\n")
    (d / "image.png").write_bytes(b"\x89PNG not indexed")
    return d


@pytest.fixture
def browser(kb, tokenizer):  # noqa: F811
    return BrowserTool(LocalSearchBackend(str(kb)), tokenizer=tokenizer)


# ---------------------------------------------------------------- local search
def test_index_and_protocol(kb):
    backend = LocalSearchBackend(str(kb))
    assert isinstance(backend, SearchBackend)
    assert backend.source == "kb"
    assert sorted(backend.pages) == ["file://kb/birds.html", "file://kb/cooking.txt",
                                     "file://kb/guide/sandbox.md", "file://kb/index.md",
                                     "file://kb/manual.txt"]  # no hidden files, no images


@pytest.mark.parametrize("query,url", [
    ("frobnicators quota", "file://kb/guide/sandbox.md"),
    ("ptarmigan", "file://kb/birds.html"),
    ("arborio risotto", "file://kb/cooking.txt"),
    ("xylograph", "file://kb/manual.txt"),
    ("knowledge base overview", "file://kb/index.md"),
])
def test_rare_terms_rank_the_right_page_first(browser, query, url):
    browser.search(query)
    page = browser.page()
    assert page.urls["0"] == url


def test_search_results_view(browser):
    assert browser.search("frobnicators quota") == (
        "[0] frobnicators quota\n"
        "**viewing lines [0 - 5] of 5**\n\n"
        "L0: \n"
        "L1: URL: \n"
        "L2: # Search Results\n"
        "L3: \n"
        "L4:   * 【0†Sandbox guide†kb】 exceeds its quota of frobnicators is stopped at once. \n"
        "L5: See the overview and the bubblewrap site.")
    assert "No" not in browser.search("no such words anywhere zzzz")  # an empty results page
    assert browser.page().urls == {}


def test_open_find_and_scroll_views(browser):
    browser.search("frobnicators")
    assert browser.open(0) == (
        "[1] Sandbox guide (file://kb/guide/sandbox.md)\n"
        "**viewing lines [0 - 9] of 9**\n\n"
        "L0: # Sandbox guide\n"
        "L1: \n"
        "L2: The python tool runs in a sandbox made with bubblewrap.\n"
        "L3: \n"
        "L4: ## Limits\n"
        "L5: \n"
        "L6: Memory, CPU time, processes and file size are limited. A process that\n"
        "L7: exceeds its quota of frobnicators is stopped at once.\n"
        "L8: \n"
        "L9: See the 【0†overview】 and the 【1†bubblewrap site†github.com】.")
    assert browser.find("Frobnicators") == (
        "[2] Find results for text: `frobnicators` in `Sandbox guide` "
        "(file://kb/guide/sandbox.md/find?pattern=frobnicators)\n"
        "**viewing lines [0 - 3] of 3**\n\n"
        "L0: # 【0†match at L7】\n"
        "L1: exceeds its quota of frobnicators is stopped at once.\n"
        "L2: \n"
        "L3: See the overview and the bubblewrap site.")
    assert "【0†match at L6】" in browser.find("memory", cursor=1)  # any case: "Memory, CPU"
    browser.page_stack.pop()
    # The find result's link opens the page at the match (the four lines before it first).
    assert browser.open(0).startswith("[3] Sandbox guide (file://kb/guide/sandbox.md)\n"
                                      "**viewing lines [3 - 9] of 9**\n\nL3: \nL4: ## Limits")
    # Scrolling: open without id, at a location, a number of lines.
    assert browser.open(loc=6, num_lines=2) == (
        "[4] Sandbox guide (file://kb/guide/sandbox.md)\n"
        "**viewing lines [6 - 7] of 9**\n\n"
        "L6: Memory, CPU time, processes and file size are limited. A process that\n"
        "L7: exceeds its quota of frobnicators is stopped at once.")
    # A relative link between documents, then the page at an older cursor.
    assert browser.open(0).startswith("[5] Overview (file://kb/index.md)\n")
    # Link 1 of the guide (cursor 4) leads to the web, which a local index does not serve.
    assert "`https://github.com/containers/bubblewrap` is not a document of the local index" \
        in browser.open(1, cursor=4)
    assert browser.current_cursor == 5


def test_search_result_opens_at_its_best_passage(browser):
    browser.search("quixotic xylograph")
    view = browser.open(0)
    lines = view.split("\n")
    assert lines[0] == "[1] Long manual (file://kb/manual.txt)"
    first = int(lines[3].split(":")[0][1:])
    assert 240 <= first <= 251  # positioned near L251 (the match), not at L0
    assert any("quixotic xylograph" in ln for ln in lines)


def test_view_is_cut_at_view_tokens(kb, tokenizer):  # noqa: F811
    b = BrowserTool(LocalSearchBackend(str(kb)), tokenizer=tokenizer, view_tokens=200)
    view = b.open("file://kb/manual.txt")
    header, body = view.split("\n\n", 1)
    assert "**viewing lines [0 - " in header
    last = int(header.split(" - ")[1].split("]")[0])
    assert 5 < last < 40
    n_tokens = len(tokenizer.encode(body))
    assert 150 <= n_tokens <= 200 + 40  # about view_tokens, cut at a line end
    nxt = b.open(loc=last + 1)
    assert nxt.split("\n\n", 1)[1].startswith(f"L{last + 1}: ")


def test_citations_point_at_the_right_lines(browser):
    browser.search("frobnicators")
    browser.open(0)
    browser.search("arborio")
    browser.open(0)
    answer = ("The quota is enforced 【1†L6-L7】 and risotto needs arborio 【3†L1】; "
              "nonsense 【9†L1】 and 【1†no lines】.")
    cites = browser.citations(answer)
    assert [(c.cursor, c.line_start, c.line_end, c.url) for c in cites] == [
        (1, 6, 7, "file://kb/guide/sandbox.md"), (3, 1, 1, "file://kb/cooking.txt")]
    assert "frobnicators" in cites[0].text and cites[1].text == \
        "A good risotto needs arborio rice and patience."
    assert answer[cites[0].start:cites[0].end] == "【1†L6-L7】"
    text, annotations, partial = browser.normalize_citations(answer + " more 【2†L")
    assert "([kb](file://kb/guide/sandbox.md))" in text and partial
    assert [a["url"] for a in annotations] == [  # any mark with a known cursor
        "file://kb/guide/sandbox.md", "file://kb/cooking.txt", "file://kb/guide/sandbox.md"]
    assert "【9†L1】" in text  # an unknown cursor stays as written
    for a in annotations:
        assert text[a["start_index"]:a["end_index"]].startswith(" ([kb](")


def test_model_errors_are_text(browser):
    assert browser.open(0) == "No pages to access!"
    assert browser.find("x") == "No pages to access!"
    browser.search("ptarmigan")
    assert browser.open(7) == "Invalid link id `7`."
    assert browser.find("x") == "Cannot run `find` on search results page or find results page"
    assert browser.open(cursor=5) == ("Cursor `5` is out of range. "
                                      "Available cursor indices: [0 - 0].")
    assert browser.open(loc=50) == ("Invalid location parameter: `50`. "
                                    "Cannot exceed page maximum of 5.")
    assert browser.current_cursor == 0  # failed views are not left on the stack
    # The index is all the browser can read: not the host's files, not the web.
    for url in ("file:///etc/passwd", "file://kb/../../../etc/passwd", "https://example.com/"):
        assert "is not a document of the local index" in browser.open(url)
    assert browser.call("open", "not json") == '{"error": "Invalid function arguments"}'
    assert browser.call("fly", "{}") == '{"error": "Unknown function: fly"}'
    assert "Invalid function arguments" in browser.call("find", '{"bad": 1}')
    assert browser.call("open", '{"id": 0.0}').startswith("[1] Birds of the fjords")
    assert browser.find("PTARMIGAN").startswith("[2] Find results for text: `ptarmigan`")


def test_view_source_and_html_page(browser):
    browser.open("file://kb/birds.html")
    src = browser.open(view_source=True)
    assert src.startswith("[1] Birds of the fjords (view-source:file://kb/birds.html)")
    assert "L0: <html><head><title>Birds of the fjords</title>" in src
    assert browser.open(cursor=0).startswith("[2] Birds of the fjords (file://kb/birds.html)\n")


def test_html_processing_matches_the_reference():
    html = ("<html><head><title>T</title></head><body><h2>Intro</h2><p>1. item with *star* "
            "and a_b and + plus</p><p>See <a href=\"/x\">local link</a> and <a href=\""
            "https://other.org/y\">other <b>bold</b> †</a> and <a href=\"#sec\">anchor</a> again"
            " <a href=\"https://example.com/x\">dup</a>. x<sup>2</sup> H<sub>2</sub>O <img alt="
            "\"cat\" src=\"c.png\"> <img src=\"d.png\"> 【fake】 café \U0001F600 end</p><table><tr>"
            "<td>a</td><td>b</td></tr></table><ul><li>one</li><li>two</li></ul><pre>code  block\n"
            "  x</pre><a href=\"mailto:x@y\">mail</a><a href=\"/img\"><img src=a.png></a>"
            "</body></html>")
    page = process_html(html, "https://example.com/page", None, display_urls=True)
    assert page.text == (
        "\nURL: https://example.com/page\n## Intro \n\n1\\. item with *star* and a_b and + plus"
        " \n\nSee 【0†local link】 and 【1†other bold ‡†other.org】 and anchor again 【0†dup】. "
        "x^{2} H_{2}O [Image 0: cat] [Image 1] 〖fake〗 café end \n\na b   \n\n  * one \n"
        "  * two \n\n    code  block\n      x \n\nmail[Image 2]")
    assert page.urls == {"0": "https://example.com/x", "1": "https://other.org/y"}
    assert page.title == "T"
    assert wrap_lines("a" * 85 + "\n\nshort") == ["a" * 80, "a" * 5, "", "short"]


# ---------------------------------------------------------------- web search APIs
class _Api(BaseHTTPRequestHandler):
    """Speaks the part of Exa's and You.com's APIs the backends use; records the requests."""

    seen: list = []

    def log_message(self, *a):  # quiet
        pass

    def _reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self):
        n = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        u = urlparse(self.path)
        self.seen.append((self.command, u.path, parse_qs(u.query),
                          {k.lower(): v for k, v in self.headers.items()}, body))
        return u, body

    def do_POST(self):
        u, body = self._record()
        key = self.headers.get("x-api-key")
        if key != "good-key":
            return self._reply(401, {"error": "invalid api key"})
        if u.path == "/search":  # Exa
            return self._reply(200, {"results": [
                {"title": "Ptarmigan facts", "url": "https://birds.example.org/ptarmigan",
                 "summary": "A grouse of cold places."},
                {"title": "Other", "url": "https://other.example.com/x", "summary": "Else."}]})
        if u.path == "/contents":  # Exa
            return self._reply(200, {"results": [{"title": "Ptarmigan facts", "text":
                                     "<h1>Ptarmigan</h1><p>White in <a href='/winter'>winter"
                                     "</a>.</p>"}]})
        if u.path == "/v1/contents":  # You.com
            return self._reply(200, [{"title": "Y page", "html": "<p>You.com page</p>"}])
        self._reply(404, {"error": "no such endpoint"})

    def do_GET(self):
        u, _ = self._record()
        if self.headers.get("x-api-key") != "good-key":
            return self._reply(403, {"error": "forbidden"})
        if u.path == "/v1/search":  # You.com
            return self._reply(200, {"results": {
                "web": [{"title": "Web hit", "url": "https://web.example.com/a",
                         "snippets": ["first snippet", "second"]}],
                "news": [{"title": "News hit", "url": "https://news.example.com/b",
                          "description": "news text"}]}})
        self._reply(404, {"error": "no such endpoint"})


@pytest.fixture(scope="module")
def api():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_exa_backend(api):
    _Api.seen.clear()
    b = BrowserTool(ExaBackend("good-key", base_url=api), max_search_results=7)
    assert b.search("ptarmigan", topn=3) == (
        "[0] ptarmigan\n**viewing lines [0 - 5] of 5**\n\nL0: \nL1: URL: \n"
        "L2: # Search Results\nL3: \n"
        "L4:   * 【0†Ptarmigan facts†birds.example.org】 A grouse of cold places.\n"
        "L5:   * 【1†Other†other.example.com】 Else.")
    method, path, _, headers, body = _Api.seen[-1]
    assert (method, path) == ("POST", "/search")
    assert body == {"query": "ptarmigan", "numResults": 7,
                    "contents": {"text": True, "summary": True}}
    assert headers["x-api-key"] == "good-key"
    assert b.open(0) == (
        "[1] Ptarmigan facts (https://birds.example.org/ptarmigan)\n"
        "**viewing lines [0 - 4] of 4**\n\nL0: \nL1: URL: https://birds.example.org/ptarmigan\n"
        "L2: # Ptarmigan \nL3: \nL4: White in 【0†winter】.")
    assert _Api.seen[-1][4] == {"urls": ["https://birds.example.org/ptarmigan"],
                                "text": {"includeHtmlTags": True}}
    bad = BrowserTool(ExaBackend("wrong", base_url=api))
    assert bad.search("x") == ('Error during search for `x`: ExaBackend error 401: '
                               '{"error": "invalid api key"}')


def test_youcom_backend(api):
    _Api.seen.clear()
    b = BrowserTool(YouComBackend("good-key", base_url=api))
    view = b.search("hits")
    assert "L4:   * 【0†Web hit†web.example.com】 first snippet second" in view
    assert "L5:   * 【1†News hit†news.example.com】 news text" in view
    method, path, query, _, _ = _Api.seen[-1]
    assert (method, path, query) == ("GET", "/v1/search", {"query": ["hits"], "count": ["20"]})
    assert "You.com page" in b.open(0)
    assert _Api.seen[-1][1:2] == ("/v1/contents",)


def test_web_backend_needs_a_key(monkeypatch, api):
    monkeypatch.delenv("EXA_API_KEY", raising=False)
    out = BrowserTool(ExaBackend(base_url=api)).search("x")
    assert "ExaBackend needs an API key" in out and "EXA_API_KEY" in out
    from gptoss.tools import web_backend_from_env

    monkeypatch.delenv("YDC_API_KEY", raising=False)
    monkeypatch.delenv("BROWSER_BACKEND", raising=False)
    with pytest.raises(ValueError, match="browser-index"):
        web_backend_from_env()
    monkeypatch.setenv("EXA_API_KEY", "k")
    assert isinstance(web_backend_from_env(), ExaBackend)


def test_local_backend_errors(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        LocalSearchBackend(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="cannot index"):
        LocalSearchBackend(str(tmp_path), extensions=[".pdf"])
    empty = BrowserTool(LocalSearchBackend(str(tmp_path)))
    assert empty.search("anything").startswith("[0] anything\n")
