"""Defence in depth for browsers: a request a web page makes without an Origin
(<img>, <script>: Sec-Fetch-Mode no-cors) or from another site (Sec-Fetch-Site cross-site or
same-site) is refused on every endpoint; every answer says nosniff and no-store; a plain
`curl -d '{…}'` (form content type) keeps working."""
import shutil
import socket
import subprocess

import pytest

from conftest import SSEReader, retry_until


def raw(port, method, path, headers=(), body=b""):
    """-> (status, {header: value} lower-cased, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = ["%s %s HTTP/1.0" % (method, path), "Host: 127.0.0.1:%d" % port] + list(headers)
    if body:
        lines.append("Content-Length: %d" % len(body))
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    head, _, content = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for l in header_lines:
        k, _, v = l.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), hdrs, content


BROWSER = [("Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: no-cors", "Sec-Fetch-Dest: image"),
           ("Sec-Fetch-Site: same-site", "Sec-Fetch-Mode: cors"),
           ("Sec-Fetch-Site: cross-site", "Sec-Fetch-Mode: navigate"),
           ("Sec-Fetch-Site: same-origin", "Sec-Fetch-Mode: no-cors", "Sec-Fetch-Dest: script")]


@pytest.mark.parametrize("headers", BROWSER)
@pytest.mark.parametrize("method,path", [("GET", "/state"), ("GET", "/events"), ("GET", "/health"),
                                         ("GET", "/api/preview?thread=x"), ("GET", "/"),
                                         ("POST", "/set-status")])
def test_requests_a_web_page_makes_are_refused(shared_server, headers, method, path):
    server = shared_server  # refused: nothing changes, so one server serves them all
    body = b'{"session": "main", "text": "x"}' if method == "POST" else b""
    status, hdrs, content = raw(server.port, method, path, headers, body)
    assert status == 403 and b"web pages" in content, (status, content)
    assert hdrs["x-content-type-options"] == "nosniff" and hdrs["cache-control"] == "no-store"
    assert server.session("main")["metadata"]["status"] is None  # the POST did nothing


def test_what_a_user_types_still_works_and_every_answer_says_nosniff(server):
    for headers in ((), ("Sec-Fetch-Site: none", "Sec-Fetch-Mode: navigate"), ("Sec-Fetch-Site: same-origin",)):
        status, hdrs, _ = raw(server.port, "GET", "/state", headers)
        assert status == 200, headers
        assert hdrs["x-content-type-options"] == "nosniff" and hdrs["cache-control"] == "no-store"
    for method, path in (("GET", "/nope"), ("POST", "/state"), ("PUT", "/state")):
        status, hdrs, _ = raw(server.port, method, path)
        assert status in (404, 405) and hdrs["x-content-type-options"] == "nosniff", (method, path)
    status, hdrs, _ = raw(server.port, "POST", "/set-status", (), b'{"session": "main", "text": "a"}')
    assert status == 204 and hdrs["x-content-type-options"] == "nosniff" and hdrs["cache-control"] == "no-store"


def test_the_event_stream_says_nosniff(server, sse):
    r = sse(server.port)
    r.next()
    head = retry_until(lambda: r.headers).decode("latin-1").lower()
    assert "x-content-type-options: nosniff" in head and "cache-control: no-store" in head


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_plain_curl_d_without_a_content_type_keeps_working(server):
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-d",
                        '{"session": "main", "text": "from curl", "tone": "info"}',
                        "http://127.0.0.1:%d/set-status" % server.port], stdout=subprocess.PIPE, timeout=20)
    assert r.stdout == b"204"
    assert server.session("main")["metadata"]["status"]["text"] == "from curl"
