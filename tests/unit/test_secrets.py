"""Issue 16, "two secrets", unit by unit: a URL's credentials are never shown and always
redacted, in every spelling a server may echo them (base64 included); the server key is
stripped of whitespace with a warning. (Through the command line: tests/cli/test_secrets_cli.py.)
"""

from __future__ import annotations

import base64
import io
import re
from urllib.parse import quote

import pytest
import trio

import stairflow as sf
from stairflow._backends.openai import Endpoint, OpenAIBackend
from stairflow._backends.redact import redact
from stairflow._cli.serve import _server_key
from stairflow._urls import display_url, url_secrets

KEY = "sk-url/Zq8+key-77c1e0"


@pytest.mark.parametrize(("url", "shown"), [
    ("http://alice:s3cret-key@host:8000/v1", "http://[redacted]@host:8000/v1"),
    ("https://s3cret-key@host/v1", "https://[redacted]@host/v1"),
    ("http://alice:s3cret@key@host/v1?q=a@b#c@d", "http://[redacted]@host/v1?[redacted]"),
    ("HTTP://u:p@[::1]:8/v1", "HTTP://[redacted]@[::1]:8/v1"),
    ("ftp://u:s3cret-key@host", "ftp://[redacted]@host"),  # shown in "not usable" errors
    ("http://u:sk-a/b@host/v1", "http://[redacted]@host/v1"),  # unusable: an unescaped "/"
    ("u:s3cret-key@host/v1", "[redacted]@host/v1"),  # a forgotten scheme
    ("//u:p@host", "//[redacted]@host"),
    ("http://host:8000/v1", "http://host:8000/v1"),
    ("http://host/v1/a@b?c=d@e", "http://host/v1/a@b?[redacted]"),  # "@" past the host
    ("http://host/v1?api-key=tok12345#frag", "http://host/v1?[redacted]"),  # a key may travel
    ("http://host/v1#frag", "http://host/v1?[redacted]"),
    ("", ""),
])
def test_display_url_hides_the_userinfo_and_the_query(url, shown):
    assert display_url(url) == shown


def test_url_secrets_are_the_credentials_as_written_and_decoded():
    url = f"http://alice:{quote(KEY, safe='')}@host/v1"
    assert set(url_secrets(url)) == {f"alice:{quote(KEY, safe='')}", quote(KEY, safe=""), KEY,
                                     f"alice:{KEY}"}
    assert set(url_secrets("http://sk-key%2Fin-user@host/v1")) == {
        "sk-key%2Fin-user", "sk-key/in-user", "sk-key/in-user:"}  # a key as the user name
    assert url_secrets("http://host/v1") == url_secrets("http://host/a@b") == ()
    # a key in the query (?api-key=...) is one too; short values (?v=1) are not
    assert url_secrets("http://host/v1?api-key=tok123456&v=1") == ("tok123456",)


@pytest.mark.parametrize("before", ["", ":", "u:", "alice:", "user:xy"])
@pytest.mark.parametrize("after", ["", ":", "x", "xy"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_a_key_is_redacted_inside_any_base64_text(before, after, encode):
    # Basic auth sends base64(user:password): with api_key_env's key as either part, or a
    # URL's, the key starts at any offset of the encoded bytes
    text = encode(f"{before}{KEY}{after}".encode()).decode()
    out = redact(f"got Basic {text}.", [KEY])
    match = re.fullmatch(r"got Basic ([\w+/-]*)\[redacted\]([\w+/=-]*)\.", out)
    assert match, out
    # what is left spells the text around the key, and at most 2 characters of its edges
    assert len(match[1]) <= -(-len(before) * 4 // 3) + 1
    assert len(match[2]) <= -(-len(after) * 4 // 3) + 3


def test_base64_matching_keeps_the_rules_of_plain_matching():
    # a short value is not a secret, even if its encoding is long enough to match
    short = "sk-1234"
    assert redact(base64.b64encode(short.encode()).decode(), [short]) == "c2stMTIzNA=="
    assert redact("Basic " + base64.b64encode(b"nothing secret here").decode(), [KEY]) == (
        "Basic bm90aGluZyBzZWNyZXQgaGVyZQ==")
    # as in JSON or a URL: "/" escaped, "+" percent-encoded
    text = base64.b64encode(f"alice:{KEY}".encode()).decode()
    for spelt in (text.replace("/", "\\/"), text.replace("+", "%2B").replace("/", "%2f")):
        assert "[redacted]" in redact(spelt, [KEY])


def test_the_backend_shows_no_url_credentials_and_redacts_them():
    url = f"http://alice:{quote(KEY, safe='')}@host:8000/v1"
    b = OpenAIBackend(Endpoint(url, "m"), {"p": Endpoint("http://other:9/v1", "n")})
    assert b.name == "openai http://[redacted]@host:8000/v1"
    assert b.default.describe() == "http://[redacted]@host:8000/v1 (model 'm')"
    assert {KEY, f"alice:{KEY}"} <= set(b.secret_values())
    echoed = base64.b64encode(f"alice:{KEY}".encode()).decode()
    assert redact(f"got Basic {echoed}", b.secret_values()) == "got Basic [redacted]"


@pytest.mark.parametrize("user", ["", "apikey"])
def test_an_api_key_env_key_echoed_as_basic_auth_is_redacted(monkeypatch, user):
    monkeypatch.setenv("SF_SECRET_KEY", KEY)
    b = OpenAIBackend(Endpoint("http://host/v1", "m", "SF_SECRET_KEY"))
    echoed = base64.b64encode(f"{user}:{KEY}".encode()).decode()
    out = redact(f"bad credentials Basic {echoed}", b.secret_values())
    left, cut, right = out.removeprefix("bad credentials Basic ").partition("[redacted]")
    assert cut and len(left) <= -(-(len(user) + 1) * 4 // 3) + 1 and len(right) <= 3


def test_a_run_s_backend_name_has_no_url_credentials():
    g = sf.Graph("two", defaults={"max_tokens": 4})
    g.input("q")
    g.llm("p")
    g.llm("own", base_url="https://bob:other-s3cret@b.example/v1", model="x")
    g.connect("q", ["p", "own"])
    g.llm("agg", prompt="moa-aggregate")
    g.connect(["p", "own"], "agg")
    g.connect("agg", g.output("out"))

    async def name() -> str:
        url = f"http://alice:{quote(KEY, safe='')}@a.example/v1"
        async with sf.open_backend(g, "openai", base_url=url, model="m") as backend:
            return str(getattr(backend, "name", ""))

    assert trio.run(name) == ("openai (2 endpoints: http://[redacted]@a.example/v1, "
                              "https://[redacted]@b.example/v1)")


def test_an_unusable_url_s_error_shows_no_credentials():
    g = sf.Graph("one")
    g.input("q")
    g.llm("p")
    g.connect("q", "p")
    g.connect("p", g.output("out"))

    async def go() -> None:
        async with sf.open_backend(g, "openai", base_url=f"ftp://alice:{KEY}@host/v1",
                                   model="m"):
            pass

    with pytest.raises(sf.ConfigError) as info:
        trio.run(go)
    assert str(info.value) == (
        "base_url 'ftp://[redacted]@host/v1' is not usable: it is not a valid URL (in a "
        "user:password@ part, write '/', '?', '#' and '@' as %2F, %3F, %23, %40); use one "
        "like http://127.0.0.1:8000/v1")


@pytest.mark.parametrize(("given", "warned"), [
    ("k3y-from-a-file\n", True), (" k3y-from-a-file\r\n", True), ("k3y-from-a-file", False)])
def test_the_server_key_is_stripped_with_a_warning(monkeypatch, given, warned):
    monkeypatch.setenv("SERVE_KEY", given)
    err = io.StringIO()
    assert _server_key("SERVE_KEY", err) == "k3y-from-a-file"
    assert err.getvalue().startswith("stairflow: warning: the key in SERVE_KEY had "
                                     "whitespace around it") is warned
    assert err.getvalue().count("\n") == warned and "k3y" not in err.getvalue()


def test_a_bad_base_url_in_a_graph_is_shown_without_its_key() -> None:
    g = sf.Graph("x")
    q = g.input("q")
    a = g.llm("a", base_url="ftp://alice:sk-SECRETKEY123@host/v1", model="m")
    g.connect(q, a)
    g.connect(a, g.output("o"))
    with pytest.raises(sf.GraphError) as caught:
        g.build()
    assert "SECRETKEY123" not in str(caught.value)
    assert "[redacted]@host" in str(caught.value)
