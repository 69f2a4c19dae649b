"""The admin token guard (:mod:`allq.client.admin_token`) in front of the whole site:
REST routes, the dashboard and /metrics, over twisted.web and the httptools path."""

import json

import pytest
from treq.testing import StubTreq
from twisted.web.resource import Resource

from allq.client.admin_token import TokenGuard, check_admin_token, needs_token
from allq.client.dashboard import Dashboard
from allq.client.fast_http import FastHTTPFactory
from allq.client.http_guard import HostGuard
from allq.client.site import build_site

from rest_case import RestTestCase

TOKEN = "s3cret-admin-token-0123456789"


def test_needs_token():
    assert needs_token("tcp:8090")
    assert needs_token("tcp:8090:interface=0.0.0.0")
    assert needs_token("tcp:8090:interface=192.168.1.4")
    assert needs_token("ssl:8443")
    assert not needs_token("tcp:8090:interface=127.0.0.1")
    assert not needs_token("tcp:8090:interface=127.0.0.2")
    assert not needs_token("tcp:8090:interface=localhost")
    assert not needs_token("unix:/run/allq/http.sock")


def test_check_admin_token():
    assert check_admin_token(TOKEN) == TOKEN
    for bad in ("", "short", "x" * 15, "with space 0123456789", "tab\t0123456789abcdef"):
        with pytest.raises(ValueError):
            check_admin_token(bad)


class FakeRequest:
    def __init__(self, authorization=None):
        self.headers = {} if authorization is None else {b"authorization": authorization}
        self.set = {}
        self.code = 200

    def getHeader(self, name):  # noqa: N802 - twisted's name
        return self.headers.get(name)

    def setHeader(self, name, value):  # noqa: N802
        self.set[name] = value

    def setResponseCode(self, code):  # noqa: N802
        self.code = code


@pytest.mark.parametrize("given", [None, b"", b"Bearer", b"Bearer " + TOKEN.encode()[:-1],
                                   b"bearer " + TOKEN.encode(), TOKEN.encode(),
                                   b"Bearer " + TOKEN.encode() + b"x", b"Basic abc"])
def test_guard_refuses_anything_but_the_token(given):
    request = FakeRequest(given)
    body = TokenGuard(TOKEN).refusal(request)
    assert request.code == 401
    assert json.loads(body)["error"] == "unauthorized"
    assert request.set[b"www-authenticate"] == b'Bearer realm="allq"'


def test_guard_lets_the_token_through():
    request = FakeRequest(b"Bearer " + TOKEN.encode())
    assert TokenGuard(TOKEN).refusal(request) is None
    assert request.code == 200 and request.set == {}


class TokenSiteTests(RestTestCase):
    """The whole site behind a token (fast path included: the twin case)."""

    def setUp(self):
        super().setUp()
        site = build_site(self.api.resource(), None, Dashboard(),
                          guard=HostGuard(["allq.test"]), admin_token=TOKEN)
        self.site = site
        self.stub = self.serve_site(site)

    def serve_site(self, site):
        stub = StubTreq(Resource())
        agent = stub._agent
        agent._rootResource = site.resource
        if self.http_parser == "httptools":
            agent._serverFactory = FastHTTPFactory(site, self.api.fast_routes())
        else:
            agent._serverFactory = site
        return stub

    def test_no_token_is_401_everywhere(self):
        for method, path in (("POST", "/job"), ("GET", "/jobs?tube=t&state=ready"),
                             ("GET", "/health"), ("GET", "/openapi.json"),
                             ("PUT", "/kick?tube=t")):
            reply = self.call(method, path, json={"tube": "t", "body": "x"}
                              if method == "POST" else None)
            self.assert_error(reply, 401, "unauthorized")
        reply = self.call("GET", "/health", headers={"authorization": "Bearer wrong-token-0123456"})
        self.assert_error(reply, 401, "unauthorized")
        self.assertEqual(self.sent(), [])

    def test_the_dashboard_files_need_no_token(self):
        """The page and its files hold no data: a browser opens them, then the page
        sends the token on its calls."""
        for path in ("/", "/static/dashboard.js"):
            response = self.result_of_with_flush(self.stub.request("GET", "http://allq.test" + path))
            self.assertEqual(response.code, 200)

    def test_the_token_opens_every_route(self):
        auth = {"authorization": "Bearer " + TOKEN}
        reply = self.call("POST", "/job", json={"tube": "t", "body": "x"}, headers=auth)
        self.assertEqual(reply.code, 200, reply.json)
        page = self.ok("GET", "/jobs?tube=t&state=ready", headers=auth)
        self.assertEqual(page["total"], 1)
        response = self.result_of_with_flush(
            self.stub.request("GET", "http://allq.test/", headers=auth))
        self.assertEqual(response.code, 200)
