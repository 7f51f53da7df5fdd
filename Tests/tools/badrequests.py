#!/usr/bin/env python3
"""A corpus of bad requests for a running Kiln server (reliability check R3).

    python3 Tests/tools/badrequests.py 127.0.0.1:8080 [--token T] [--only SUBSTRING] [-v]

Every case is sent over a raw socket (no HTTP library: the bytes go out exactly as
written, smuggling attempts included) and must get the exact status it names. Where Kiln
answers (not libmicrohttpd's own parser), the body must be Kiln's JSON error
`{"error": {"code", "message"[, "field"]}}`. After every case `GET /healthz` must answer
200 within a second, and at the end `GET /v1/stats` must count as many workloads as at
the start: no case submits anything that could run. Meanwhile slow clients (slowloris:
headers or a body a byte at a time, or nothing at all) must be dropped by the server
within its request deadline while everyone else is served. One line per case, a
summary, and exit code 1 when anything failed.

Who decides the answer. Kiln (the JSON answers) decides everything above the HTTP
framing. libmicrohttpd 0.9.75 parses the request line and headers itself and answers
some requests before Kiln sees them, with its own small HTML page and `Connection:
close` (marked `mhd` below):
  - an unparsable request line, header line without a colon, bare CR, a continuation
    line before any header, a malformed chunk size or chunk framing: 400;
  - a Content-Length that is not a plain decimal number: 400; one beyond 2^64: 413.
    (0.9.75 sends its header block twice in these two answers; the status is right.)
  - a URL that does not fit the connection's 4 KiB buffer: 414; headers that do not:
    431; a chunk size beyond 2^64: 413;
  - an HTTP version other than 1.0/1.1: 505 (the one 5xx here; it is the answer RFC 9110
    gives for an unsupported major version, and libmicrohttpd gives it before Kiln runs);
  - a request line without any space (not HTTP at all: binary noise, a TLS hello, a bare
    `GET`): libmicrohttpd closes the connection WITHOUT an answer. Kiln never sees these
    requests and cannot answer them; the cases expect exactly that (status `-`), and the
    server must stay healthy.
libmicrohttpd also decides, without Kiln being able to see it:
  - a NUL byte in the request line or a header value ends that line or value at the NUL
    (C strings), so `GET /healthz\\0junk` is `GET /healthz`. Kiln cannot tell, so no case
    expects a 4xx for a raw NUL there; a NUL in a header *name* leaves no colon: 400.
  - a header line with an empty name (`: x`) is dropped when it is the last header line.
Kiln itself refuses, with a JSON 400 and `Connection: close`, whatever makes the body's
length or the headers ambiguous (RFC 9112 sections 3.2, 5.1, 5.2, 6.1, 6.3):
Content-Length together with Transfer-Encoding, more than one Content-Length, a
Transfer-Encoding that is not exactly `chunked`, Transfer-Encoding in HTTP/1.0, white space
or other non-token bytes in a header name, obs-fold (libmicrohttpd 0.9.75 glues the
continuation onto the header's name: `Content-Length: 2` + ` x` would become a header
`Content-Lengthx`, and the body the next request), an HTTP/1.1 request without exactly one
valid Host. A decoded `%00` in the path or query stays the three characters `%00`.
"""
import argparse
import json
import socket
import sys
import threading
import time

# ---------------------------------------------------------------------------- transport


class Reply:
    def __init__(self):
        self.status = None
        self.headers = {}       # lowercased name -> last value
        self.body = b""
        self.error = None       # why no complete answer came
        self.closed = False     # the server closed the connection after the answer
        self.extra = b""        # bytes after the first answer (a second response?)
        self.seconds = 0.0


def read_reply(sock, head_request=False, timeout=None, want_close=False, close_wait=2.0):
    timeout = ANSWER_TIMEOUT if timeout is None else timeout
    """Reads one HTTP response from sock; with want_close, also waits for EOF."""
    r = Reply()
    t0 = time.monotonic()
    sock.settimeout(timeout)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            d = sock.recv(65536)
            if not d:
                r.error = "connection closed without an answer" if not buf else "connection closed inside the header"
                r.closed = True
                r.seconds = time.monotonic() - t0
                return r
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        r.status = int(parts[1])
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            r.headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
        no_body = head_request or r.status in (204, 304) or 100 <= r.status < 200
        if no_body:
            r.extra = rest
        elif r.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in rest:
                    d = sock.recv(65536)
                    if not d:
                        raise EOFError("closed inside a chunked body")
                    rest += d
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(rest) < size + 2:
                    d = sock.recv(65536)
                    if not d:
                        raise EOFError("closed inside a chunk")
                    rest += d
                if size == 0:
                    rest = rest[2:]
                    break
                body += rest[:size]
                rest = rest[size + 2:]
            r.body = body
            r.extra = rest
        elif "content-length" in r.headers:
            n = int(r.headers["content-length"])
            while len(rest) < n:
                d = sock.recv(65536)
                if not d:
                    raise EOFError("closed inside the body")
                rest += d
            r.body, r.extra = rest[:n], rest[n:]
        else:
            # No length: the body runs to the end of the connection.
            while True:
                d = sock.recv(65536)
                if not d:
                    break
                rest += d
            r.body = rest
            r.closed = True
        if want_close and not r.closed:
            sock.settimeout(close_wait)
            try:
                while True:
                    d = sock.recv(65536)
                    if not d:
                        r.closed = True
                        break
                    r.extra += d
            except (socket.timeout, TimeoutError):
                pass
            except (ConnectionResetError, BrokenPipeError):
                r.closed = True
    except (socket.timeout, TimeoutError):
        r.error = "no complete answer within %.0f s" % timeout
    except (ConnectionResetError, BrokenPipeError, EOFError) as e:
        r.error = "connection dropped: %r" % e
        r.closed = True
    except (ValueError, IndexError) as e:
        r.error = "unparsable answer: %r in %r" % (e, buf[:200])
    r.seconds = time.monotonic() - t0
    return r


def exchange(host, port, data, head_request=False, timeout=None, want_close=False):
    timeout = ANSWER_TIMEOUT if timeout is None else timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            # The server may answer early (413) and close while a big body is still going
            # out; the answer is still in our receive buffer.
            pass
        return read_reply(sock, head_request=head_request, timeout=timeout, want_close=want_close)
    finally:
        sock.close()


# ---------------------------------------------------------------------------- cases


class Case:
    def __init__(self, category, name, data, status, json_error=True, field=None, code=None,
                 close=False, head=False, allow=False, answered_by="kiln", note=""):
        self.category = category
        self.name = name
        self.data = data                # bytes, or a callable(ctx) -> bytes
        self.status = status
        self.json_error = json_error    # Kiln's JSON error body is required
        self.field = field              # expected error.field
        self.code = code                # expected error.code
        self.close = close              # the server must close after the one answer
        self.head = head
        self.allow = allow              # 405: Allow header required
        self.answered_by = answered_by
        self.note = note


class Ctx:
    def __init__(self, host, port, token):
        self.host = host
        self.port = port
        self.token = token

    def auth(self):
        return [("Authorization", "Bearer " + self.token)] if self.token else []


def raw(method, target, headers=(), body=None, version="HTTP/1.1", host=True, auth=True, length=True):
    """A builder: request bytes made when the case runs (it needs the token and port)."""
    def build(ctx):
        hs = []
        if host:
            hs.append(("Host", "%s:%d" % (ctx.host, ctx.port)))
        if auth:
            hs += ctx.auth()
        hs += list(headers)
        b = body if body is not None else b""
        if isinstance(b, str):
            b = b.encode()
        if body is not None and length:
            hs.append(("Content-Length", str(len(b))))
        out = ("%s %s %s\r\n" % (method, target, version)).encode("latin-1")
        for k, v in hs:
            out += (k.encode("latin-1") if isinstance(k, str) else k) + b": " + \
                   (v.encode("latin-1") if isinstance(v, str) else v) + b"\r\n"
        return out + b"\r\n" + b
    return build


def rawbytes(fn):
    """A builder from a function of (host header line, auth header lines)."""
    def build(ctx):
        host = ("Host: %s:%d\r\n" % (ctx.host, ctx.port)).encode()
        auth = b"".join(("%s: %s\r\n" % kv).encode() for kv in ctx.auth())
        return fn(host, auth)
    return build


UNKNOWN = "01JKQX7V8MZRN3B4HTGFWDCS9E"   # a well-formed ULID no server has made
CASES = []


def add(*a, **k):
    CASES.append(Case(*a, **k))


def post(body, path="/v1/workloads", **k):
    return raw("POST", path, [("Content-Type", "application/json")], body, **k)


# -- 1. malformed JSON: 400 invalid_json --------------------------------------------
MALFORMED = [
    ("empty_body", ""),
    ("whitespace_only", "  \r\n\t "),
    ("trailing_comma_object", '{"runtime": "shell", "code": "true",}'),
    ("trailing_comma_array", '{"runtime": "shell", "code": "true", "input": [1,]}'),
    ("single_quotes", "{'runtime': 'shell', 'code': 'true'}"),
    ("unquoted_keys", '{runtime: "shell", code: "true"}'),
    ("line_comment", '{"runtime": "shell", // note\n "code": "true"}'),
    ("block_comment", '{"runtime": "shell", /* note */ "code": "true"}'),
    ("nan", '{"runtime": "shell", "code": "true", "input": NaN}'),
    ("infinity", '{"runtime": "shell", "code": "true", "input": Infinity}'),
    ("minus_infinity", '{"runtime": "shell", "code": "true", "input": -Infinity}'),
    ("leading_zero", '{"runtime": "shell", "code": "true", "input": 01}'),
    ("leading_plus", '{"runtime": "shell", "code": "true", "input": +1}'),
    ("bare_fraction", '{"runtime": "shell", "code": "true", "input": .5}'),
    ("dot_without_digits", '{"runtime": "shell", "code": "true", "input": 1.}'),
    ("exponent_without_digits", '{"runtime": "shell", "code": "true", "input": 1e}'),
    ("exponent_sign_only", '{"runtime": "shell", "code": "true", "input": 1e+}'),
    ("hex_number", '{"runtime": "shell", "code": "true", "input": 0x10}'),
    ("minus_alone", '{"runtime": "shell", "code": "true", "input": -}'),
    ("missing_colon", '{"runtime" "shell", "code": "true"}'),
    ("missing_comma", '{"runtime": "shell" "code": "true"}'),
    ("double_comma", '{"runtime": "shell",, "code": "true"}'),
    ("leading_comma", '{, "runtime": "shell", "code": "true"}'),
    ("unclosed_object", '{"runtime": "shell", "code": "true"'),
    ("unclosed_array", '{"runtime": "shell", "code": "true", "input": [1, 2'),
    ("unclosed_string", '{"runtime": "shell", "code": "true}'),
    ("close_mismatch", '{"runtime": "shell", "code": "true", "input": [1}]'),
    ("two_documents", '{"runtime": "shell", "code": "true"}{"x": 1}'),
    ("garbage_after", '{"runtime": "shell", "code": "true"} x'),
    ("raw_tab_in_string", '{"runtime": "shell", "code": "tr\tue"}'),
    ("raw_newline_in_string", '{"runtime": "shell", "code": "tr\nue"}'),
    ("bad_escape", '{"runtime": "shell", "code": "\\x41"}'),
    ("short_unicode_escape", '{"runtime": "shell", "code": "\\u12"}'),
    ("bad_unicode_escape", '{"runtime": "shell", "code": "\\u12G4"}'),
    ("escape_at_end", '{"runtime": "shell", "code": "\\'),
    ("truncated_true", '{"runtime": "shell", "code": "x", "input": tru}'),
    ("truncated_null", '{"runtime": "shell", "code": "x", "input": nul'),
    ("uppercase_true", '{"runtime": "shell", "code": "x", "input": TRUE}'),
    ("python_none", '{"runtime": "shell", "code": "x", "input": None}'),
    ("key_not_string", '{1: "shell"}'),
    ("byte_order_mark", '\ufeff{"runtime": "shell", "code": "true"}'),
    ("form_encoded", "runtime=shell&code=true"),
    ("yaml", "runtime: shell\ncode: 'true'\n"),
    ("xml", "<workload><runtime>shell</runtime></workload>"),
    ("top_level_array", '[{"runtime": "shell", "code": "true"}]'),
    ("top_level_string", '"{\\"runtime\\": \\"shell\\"}"'),
    ("top_level_number", "42"),
    ("top_level_true", "true"),
    ("top_level_null", "null"),
    ("top_level_empty_array", "[]"),
]
for name, body in MALFORMED:
    add("malformed_json", name, post(body), 400, code="invalid_json")
# The async endpoint parses the same way.
for name, body in [("async_empty_body", ""), ("async_trailing_comma", '{"runtime": "shell",}'),
                   ("async_top_level_array", "[]"), ("async_nan", '{"runtime": "shell", "code": "x", "input": NaN}')]:
    add("malformed_json", name, post(body, "/v1/workloads/async"), 400, code="invalid_json")

# -- 2. wrong types and invalid values: 422 naming the field -------------------------
BASE = {"runtime": "shell", "code": "true"}


def with_(**fields):
    d = dict(BASE)
    for k, v in fields.items():
        if v is DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return json.dumps(d)


DROP = object()
WRONG = [
    ("missing_runtime", with_(runtime=DROP), "runtime"),
    ("missing_code", with_(code=DROP), "code"),
    ("missing_both", "{}", "runtime"),
    ("runtime_null", with_(runtime=None), "runtime"),
    ("runtime_number", with_(runtime=1), "runtime"),
    ("runtime_true", with_(runtime=True), "runtime"),
    ("runtime_array", with_(runtime=["shell"]), "runtime"),
    ("runtime_object", with_(runtime={"name": "shell"}), "runtime"),
    ("runtime_unknown", with_(runtime="cobol"), "runtime"),
    ("runtime_uppercase", with_(runtime="SHELL"), "runtime"),
    ("runtime_empty", with_(runtime=""), "runtime"),
    ("runtime_padded", with_(runtime=" shell"), "runtime"),
    ("runtime_lone_surrogate", '{"runtime": "\\ud800", "code": "true"}', "runtime"),
    ("code_null", with_(code=None), "code"),
    ("code_number", with_(code=7), "code"),
    ("code_false", with_(code=False), "code"),
    ("code_array", with_(code=["echo", "hi"]), "code"),
    ("code_object", with_(code={"src": "true"}), "code"),
    ("code_empty", with_(code=""), "code"),
    ("isolation_number", with_(isolation=2), "isolation"),
    ("isolation_unknown", with_(isolation="docker"), "isolation"),
    ("isolation_empty", with_(isolation=""), "isolation"),
    ("isolation_array", with_(isolation=["process"]), "isolation"),
    ("isolation_uppercase", with_(isolation="PROCESS"), "isolation"),
    ("resources_string", with_(resources="big"), "resources"),
    ("resources_array", with_(resources=[1, 256, 30]), "resources"),
    ("resources_number", with_(resources=1), "resources"),
    ("resources_true", with_(resources=True), "resources"),
    ("cpus_string", with_(resources={"cpus": "1"}), "resources.cpus"),
    ("cpus_true", with_(resources={"cpus": True}), "resources.cpus"),
    ("cpus_array", with_(resources={"cpus": [1]}), "resources.cpus"),
    ("cpus_object", with_(resources={"cpus": {}}), "resources.cpus"),
    ("cpus_zero", with_(resources={"cpus": 0}), "resources.cpus"),
    ("cpus_negative", with_(resources={"cpus": -1}), "resources.cpus"),
    ("cpus_too_many", with_(resources={"cpus": 65}), "resources.cpus"),
    ("cpus_fraction", with_(resources={"cpus": 1.5}), "resources.cpus"),
    ("mem_mb_string", with_(resources={"mem_mb": "256"}), "resources.mem_mb"),
    ("mem_mb_too_small", with_(resources={"mem_mb": 15}), "resources.mem_mb"),
    ("mem_mb_too_big", with_(resources={"mem_mb": 65537}), "resources.mem_mb"),
    ("mem_mb_negative", with_(resources={"mem_mb": -256}), "resources.mem_mb"),
    ("mem_mb_fraction", with_(resources={"mem_mb": 256.5}), "resources.mem_mb"),
    ("timeout_string", with_(resources={"timeout_s": "30"}), "resources.timeout_s"),
    ("timeout_zero", with_(resources={"timeout_s": 0}), "resources.timeout_s"),
    ("timeout_negative", with_(resources={"timeout_s": -30}), "resources.timeout_s"),
    ("timeout_above_max", with_(resources={"timeout_s": 2592001}), "resources.timeout_s"),
    ("timeout_fraction", with_(resources={"timeout_s": 0.5}), "resources.timeout_s"),
    ("timeout_bool", with_(resources={"timeout_s": False}), "resources.timeout_s"),
    ("env_string", with_(env="A=1"), "env"),
    ("env_array", with_(env=["A=1"]), "env"),
    ("env_number", with_(env=1), "env"),
    ("env_value_number", with_(env={"A": 1}), "env"),
    ("env_value_null", with_(env={"A": None}), "env"),
    ("env_value_object", with_(env={"A": {"B": "C"}}), "env"),
    ("env_value_array", with_(env={"A": ["1"]}), "env"),
    ("env_name_empty", with_(env={"": "x"}), "env"),
    ("env_name_with_equals", with_(env={"A=B": "x"}), "env"),
    ("env_name_with_nul", with_(env={"A\u0000B": "x"}), "env"),
    ("env_value_with_nul", with_(env={"A": "x\u0000y"}), "env"),
    ("env_last_of_many_bad", with_(env=dict([("K%d" % i, "v") for i in range(500)] + [("BAD", 0)])), "env"),
    # An isolation that exists but cannot run this runtime anywhere: isolate runs node only.
    ("isolate_cannot_run_python", with_(runtime="python", isolation="isolate"), "isolation"),
    ("isolate_cannot_run_shell", with_(runtime="shell", isolation="isolate"), "isolation"),
]
for name, body, field in WRONG:
    code = "isolation_unavailable" if name.startswith("isolate_") else "invalid_field"
    add("wrong_types", name, post(body), 422, field=field, code=code)
for name, body, field in [("async_missing_code", with_(code=DROP), "code"),
                          ("async_runtime_number", with_(runtime=3), "runtime"),
                          ("async_cpus_zero", with_(resources={"cpus": 0}), "resources.cpus"),
                          ("async_env_value_number", with_(env={"A": 1}), "env")]:
    add("wrong_types", name, post(body, "/v1/workloads/async"), 422, field=field, code="invalid_field")

# -- 3. deep nesting and huge numbers ---------------------------------------------------
def nested(depth, open_="[", close="]", inner="1"):
    return open_ * depth + inner + close * depth


DEEP = [
    # Refused by the parser (depth > 512): 400, however deep, without exhausting the stack.
    ("array_depth_513", nested(513), 400, None),
    ("array_depth_100000", nested(100000), 400, None),
    ("array_depth_100000_unclosed", "[" * 100000, 400, None),
    ("object_depth_600", nested(600, '{"a":', "}"), 400, None),
    ("input_depth_600", '{"runtime": "shell", "code": "true", "input": %s}' % nested(600), 400, None),
    ("mixed_depth_1000", '{"x":' * 500 + "[" * 500 + "]" * 500 + "}" * 500, 400, None),
    # Within the limit the parse succeeds and the fields decide: 400 for an array, 422 else.
    ("array_depth_512", nested(512), 400, None),
    ("input_depth_500_bad_runtime", '{"runtime": "cobol", "code": "x", "input": %s}' % nested(500), 422, "runtime"),
    ("env_deep_value", '{"runtime": "shell", "code": "true", "env": {"A": %s}}' % nested(300), 422, "env"),
    ("resources_deep", '{"runtime": "shell", "code": "true", "resources": %s}' % nested(300), 422, "resources"),
    # Numbers beyond a double are not representable: the parser refuses them (400).
    ("number_1e400", '{"runtime": "shell", "code": "x", "input": 1e400}', 400, None),
    ("number_minus_1e400", '{"runtime": "shell", "code": "x", "input": -1e400}', 400, None),
    ("number_10000_digits", '{"runtime": "shell", "code": "x", "input": %s}' % ("9" * 10000), 400, None),
    ("cpus_1e309", '{"runtime": "shell", "code": "x", "resources": {"cpus": 1e309}}', 400, None),
    # Representable but out of range or not whole: 422 naming the field.
    ("cpus_int64_max", '{"runtime": "shell", "code": "x", "resources": {"cpus": 9223372036854775807}}', 422, "resources.cpus"),
    ("cpus_int64_min", '{"runtime": "shell", "code": "x", "resources": {"cpus": -9223372036854775808}}', 422, "resources.cpus"),
    ("cpus_beyond_int64", '{"runtime": "shell", "code": "x", "resources": {"cpus": 18446744073709551616}}', 422, "resources.cpus"),
    ("cpus_30_digits", '{"runtime": "shell", "code": "x", "resources": {"cpus": 123456789012345678901234567890}}', 422, "resources.cpus"),
    ("cpus_1e300", '{"runtime": "shell", "code": "x", "resources": {"cpus": 1e300}}', 422, "resources.cpus"),
    ("cpus_tiny_fraction", '{"runtime": "shell", "code": "x", "resources": {"cpus": 1e-300}}', 422, "resources.cpus"),
    ("cpus_minus_zero", '{"runtime": "shell", "code": "x", "resources": {"cpus": -0}}', 422, "resources.cpus"),
    ("mem_mb_2e15", '{"runtime": "shell", "code": "x", "resources": {"mem_mb": 2e15}}', 422, "resources.mem_mb"),
    ("timeout_int64_max", '{"runtime": "shell", "code": "x", "resources": {"timeout_s": 9223372036854775807}}', 422, "resources.timeout_s"),
    ("timeout_1e18", '{"runtime": "shell", "code": "x", "resources": {"timeout_s": 1e18}}', 422, "resources.timeout_s"),
    # Big but well-formed documents: parsed, then judged.
    ("object_100000_keys", "{" + ",".join('"k%d": %d' % (i, i) for i in range(100000)) + "}", 422, "runtime"),
    ("array_200000_items_in_input", '{"runtime": "cobol", "code": "x", "input": [%s]}' % ",".join(["0"] * 200000), 422, "runtime"),
    ("code_8_mib_bad_runtime", '{"runtime": "cobol", "code": "%s"}' % ("x" * (8 << 20)), 422, "runtime"),
    ("string_of_escapes", '{"runtime": "%s", "code": "x"}' % ("\\u0041" * 100000), 422, "runtime"),
]
for name, body, status, field in DEEP:
    add("nesting_numbers", name, post(body), status, field=field,
        code="invalid_json" if status == 400 else "invalid_field")

# -- 4. invalid UTF-8 and NUL bytes ---------------------------------------------------
def bad_utf8_body(seq):
    return b'{"runtime": "shell", "code": "echo ' + seq + b'"}'


UTF8 = [
    ("lone_continuation", b"\x80"),
    ("ff_byte", b"\xff"),
    ("fe_byte", b"\xfe"),
    ("overlong_slash", b"\xc0\xaf"),
    ("overlong_nul", b"\xc0\x80"),
    ("overlong_3_byte", b"\xe0\x80\xaf"),
    ("utf16_surrogate", b"\xed\xa0\x80"),
    ("beyond_10ffff", b"\xf4\x90\x80\x80"),
    ("five_byte_form", b"\xf8\x88\x80\x80\x80"),
    ("truncated_3_byte", b"\xe2\x82"),
    ("truncated_4_byte_at_end", b"\xf0\x9f\x98"),
    ("latin1_text", "caf\xe9".encode("latin-1")),
]
for name, seq in UTF8:
    add("utf8_nul", "body_" + name, post(bad_utf8_body(seq)), 400, code="invalid_json")
add("utf8_nul", "body_utf16le", post('{"runtime": "shell", "code": "true"}'.encode("utf-16-le")), 400, code="invalid_json")
add("utf8_nul", "body_utf16_with_bom", post('{"runtime": "shell", "code": "true"}'.encode("utf-16")), 400, code="invalid_json")
add("utf8_nul", "body_invalid_utf8_in_key", post(b'{"runt\xffime": "shell", "code": "true"}'), 400, code="invalid_json")
add("utf8_nul", "body_nul_between_tokens", post(b'{"runtime": "shell",\x00 "code": "true"}'), 400, code="invalid_json")
add("utf8_nul", "body_nul_inside_string", post(b'{"runtime": "shell", "code": "tr\x00ue"}'), 400, code="invalid_json")
add("utf8_nul", "body_nul_only", post(b"\x00"), 400, code="invalid_json")
add("utf8_nul", "body_nul_after_object", post(b'{"runtime": "shell", "code": "true"}\x00'), 400, code="invalid_json")
add("utf8_nul", "body_escaped_nul_in_runtime", post('{"runtime": "shell\\u0000", "code": "true"}'), 422, field="runtime", code="invalid_field")
add("utf8_nul", "body_escaped_nul_in_env_name", post('{"runtime": "shell", "code": "true", "env": {"A\\u0000": "1"}}'), 422, field="env", code="invalid_field")
add("utf8_nul", "body_escaped_nul_in_env_value", post('{"runtime": "shell", "code": "true", "env": {"A": "\\u0000"}}'), 422, field="env", code="invalid_field")
# In the path and query: libmicrohttpd decodes %XX; Kiln keeps %00 as the three characters
# (a decoded NUL would end the C string and make `/v1/workloads/%00` the list endpoint).
add("utf8_nul", "path_id_pct00", raw("GET", "/v1/workloads/%00"), 404, code="not_found")
add("utf8_nul", "path_id_pct00_suffix", raw("GET", "/v1/workloads/%s%%00" % UNKNOWN), 404, code="not_found")
add("utf8_nul", "path_logs_pct00", raw("GET", "/v1/workloads/%00/logs"), 404, code="not_found")
add("utf8_nul", "delete_id_pct00", raw("DELETE", "/v1/workloads/%00"), 404, code="not_found")
add("utf8_nul", "query_limit_pct00", raw("GET", "/v1/workloads?limit=5%00x"), 422, field="limit", code="invalid_field")
add("utf8_nul", "query_status_pct00", raw("GET", "/v1/workloads?status=completed%00"), 422, field="status", code="invalid_field")
add("utf8_nul", "query_cursor_pct00", raw("GET", "/v1/workloads?cursor=%00"), 422, field="cursor", code="invalid_field")
# Raw bytes above 0x7F are not allowed in a request target (RFC 3986): 400, never routed.
add("utf8_nul", "path_id_invalid_utf8_raw", raw("GET", "/v1/workloads/\xff\xfe"), 400, code="bad_request", close=True)
add("utf8_nul", "path_id_invalid_utf8_pct", raw("GET", "/v1/workloads/%ff%fe%80"), 404, code="not_found")
add("utf8_nul", "query_status_invalid_utf8", raw("GET", "/v1/workloads?status=%c0%af"), 422, field="status", code="invalid_field")
add("utf8_nul", "query_runtime_invalid_utf8_raw", raw("GET", "/v1/workloads?runtime=\xe2\x82"), 400, code="bad_request", close=True)
add("utf8_nul", "header_name_with_nul", rawbytes(lambda h, a: b"GET /healthz HTTP/1.1\r\n" + h + b"X-A\x00b: 1\r\n\r\n"),
    400, json_error=False, close=True, answered_by="mhd", note="the NUL ends the name before its colon")
add("utf8_nul", "last_event_id_invalid_utf8", raw("GET", "/v1/workloads/%s/logs" % UNKNOWN, [("Last-Event-ID", b"\xff\xfe")]),
    404, code="not_found", note="the id is looked up first")

# -- 5. routing: unknown paths and ids, path traversal, wrong methods ----------------------
NOT_FOUND = [
    ("root", "GET", "/"),
    ("v1_alone", "GET", "/v1"),
    ("v1_slash", "GET", "/v1/"),
    ("v2_workloads", "GET", "/v2/workloads"),
    ("unknown_top", "GET", "/admin"),
    ("healthz_suffix", "GET", "/healthzz"),
    ("double_slash", "GET", "//v1//workloads"),
    ("case_mismatch", "GET", "/V1/Workloads"),
    ("workload_extra_segment", "GET", "/v1/workloads/%s/extra" % UNKNOWN),
    ("logs_history_extra", "GET", "/v1/workloads/%s/logs/history/more" % UNKNOWN),
    ("unknown_id", "GET", "/v1/workloads/" + UNKNOWN),
    ("unknown_id_lowercase", "GET", "/v1/workloads/" + UNKNOWN.lower()),
    ("id_too_short", "GET", "/v1/workloads/01ABC"),
    ("id_not_ulid", "GET", "/v1/workloads/not-a-workload"),
    ("id_sql_injection", "GET", "/v1/workloads/'%20OR%20'1'='1"),
    ("id_sql_injection_raw_quote", "GET", "/v1/workloads/x';DROP%20TABLE%20workloads;--"),
    ("id_2500_chars", "GET", "/v1/workloads/" + "A" * 2500),
    ("id_percent_encoded_ulid_chars", "GET", "/v1/workloads/%30%31" + UNKNOWN[2:]),
    ("id_unicode", "GET", "/v1/workloads/%E2%98%83"),
    ("async_extra_segment", "GET", "/v1/workloads/async/x"),
    ("logs_unknown_id", "GET", "/v1/workloads/%s/logs" % UNKNOWN),
    ("history_unknown_id", "GET", "/v1/workloads/%s/logs/history" % UNKNOWN),
    ("delete_unknown_id", "DELETE", "/v1/workloads/" + UNKNOWN),
    # Path traversal: nothing is normalised; an id is one segment and never a file path.
    ("traversal_dotdot_raw", "GET", "/v1/workloads/../../etc/passwd"),
    ("traversal_dotdot_to_healthz", "GET", "/v1/workloads/../healthz"),
    ("traversal_id_dotdot", "GET", "/v1/workloads/.."),
    ("traversal_id_dot", "GET", "/v1/workloads/."),
    ("traversal_pct_dotdot", "GET", "/v1/workloads/%2e%2e"),
    ("traversal_pct_slash", "GET", "/v1/workloads/..%2f..%2fetc%2fpasswd"),
    ("traversal_pct_upper", "GET", "/v1/workloads/%2E%2E%2F%2E%2E%2Fkiln.db"),
    ("traversal_backslash", "GET", "/v1/workloads/..%5c..%5cetc%5cpasswd"),
    ("traversal_double_encoded", "GET", "/v1/workloads/%252e%252e%252fetc%252fpasswd"),
    ("traversal_overlong_dot", "GET", "/v1/workloads/%c0%ae%c0%ae%c0%afetc"),
    ("traversal_logs", "GET", "/v1/workloads/..%2f..%2fetc%2fpasswd/logs"),
    ("traversal_history", "GET", "/v1/workloads/%2e%2e/logs/history"),
    ("traversal_delete", "DELETE", "/v1/workloads/..%2f..%2fkiln.db"),
    ("traversal_absolute", "GET", "/v1/workloads//etc/passwd"),
    ("traversal_state_folder", "GET", "/v1/workloads/..%2fstate%2fwork"),
    # An absolute-form target is its path (RFC 9112 section 3.2.2), authenticated and routed.
    ("absolute_form_target", "GET", "http://evil.example/v1/workloads/" + UNKNOWN),
    ("absolute_form_upper_scheme", "GET", "HTTP://evil.example/v1/workloads/" + UNKNOWN),
    ("absolute_form_https", "GET", "https://evil.example:8443/v1/workloads/" + UNKNOWN),
    ("absolute_form_no_path", "GET", "http://evil.example"),
    ("empty_first_segment", "POST", "//v1/workloads"),
    ("encoded_slash_joins_segments", "POST", "/v1%2Fworkloads"),
]
for name, method, path in NOT_FOUND:
    add("routing", name, raw(method, path), 404, code="not_found")


# -- 5b. request targets that are not origin-form or absolute-form: 400, never routed ---
# (The first of these used to skip the token check and still reach the submit handler.)
SUBMIT = '{"runtime": "shell", "code": "true"}'
TARGETS = [
    ("no_leading_slash", "POST", "x/v1/workloads"),
    ("relative_v1", "POST", "v1/workloads"),
    ("dot_relative", "POST", "./v1/workloads"),
    ("dotdot_relative", "POST", "../v1/workloads"),
    ("asterisk_target", "GET", "*"),
    ("asterisk_with_post", "POST", "*"),
    ("connect_authority", "CONNECT", "evil.example:443"),
    ("authority_form_post", "POST", "127.0.0.1:8080"),
    ("scheme_without_host", "POST", "http:/v1/workloads"),
    ("scheme_empty_host", "POST", "http:///v1/workloads"),
    ("scheme_opaque", "POST", "http:v1/workloads"),
    ("other_scheme", "POST", "ftp://evil.example/v1/workloads"),
    ("mailto_scheme", "POST", "mailto:root@evil.example"),
    ("userinfo_in_authority", "POST", "http://user:pw@evil.example/v1/workloads"),
    ("port_without_host", "POST", "http://:80/v1/workloads"),
    ("fragment", "POST", "/v1/workloads#x"),
    ("fragment_after_query", "POST", "/v1/workloads?x=1#y"),
    ("backslashes", "POST", "\\v1\\workloads"),
    ("encoded_leading_slash", "POST", "%2Fv1%2Fworkloads"),
    ("tab_in_target", "POST", "/v1/work\tloads"),
    ("vertical_tab_in_target", "POST", "/v1/workloads\x0b"),
    ("del_in_target", "POST", "/v1/workloads\x7f"),
    ("raw_high_byte", "POST", "/v1/workloads/\xff"),
    ("raw_utf8", "POST", "/v1/workloads/\xc3\xa9"),
]
for name, method, target in TARGETS:
    add("targets", name, raw(method, target, [("Content-Type", "application/json")], SUBMIT if method == "POST" else None),
        400, code="bad_request", close=True)
add("targets", "options_asterisk", raw("OPTIONS", "*"), 204, json_error=False)
METHODS = [
    ("put_workloads", "PUT", "/v1/workloads"),
    ("patch_workloads", "PATCH", "/v1/workloads"),
    ("delete_workloads", "DELETE", "/v1/workloads"),
    ("options_workloads_no_cors", "OPTIONS", "/v1/workloads"),
    # The asynchronous submit's path, never a workload id: Allow is POST only.
    ("put_async", "PUT", "/v1/workloads/async"),
    ("id_async_get", "GET", "/v1/workloads/async"),
    ("delete_async_word", "DELETE", "/v1/workloads/async"),
    ("post_workload_id", "POST", "/v1/workloads/" + UNKNOWN),
    ("put_workload_id", "PUT", "/v1/workloads/" + UNKNOWN),
    ("post_logs", "POST", "/v1/workloads/%s/logs" % UNKNOWN),
    ("delete_logs", "DELETE", "/v1/workloads/%s/logs" % UNKNOWN),
    ("post_history", "POST", "/v1/workloads/%s/logs/history" % UNKNOWN),
    ("post_healthz", "POST", "/healthz"),
    ("delete_healthz", "DELETE", "/healthz"),
    ("post_metrics", "POST", "/metrics"),
    ("post_backends", "POST", "/v1/backends"),
    ("delete_stats", "DELETE", "/v1/stats"),
    ("post_nodes", "POST", "/v1/nodes"),
    ("trace_healthz", "TRACE", "/healthz"),
    ("lowercase_get", "get", "/healthz"),
    ("made_up_method", "BREW", "/healthz"),
    ("symbol_method", "G@T", "/healthz"),
]
for name, method, path in METHODS:
    add("routing", name, raw(method, path, body="" if method in ("POST", "PUT", "PATCH") else None),
        405, code="method_not_allowed", allow=True)

# -- 6. query parameters: 422 naming the parameter ------------------------------------
QUERY = [
    ("list_limit_zero", "/v1/workloads?limit=0", "limit"),
    ("list_limit_501", "/v1/workloads?limit=501", "limit"),
    ("list_limit_negative", "/v1/workloads?limit=-1", "limit"),
    ("list_limit_word", "/v1/workloads?limit=ten", "limit"),
    ("list_limit_fraction", "/v1/workloads?limit=1.5", "limit"),
    ("list_limit_empty", "/v1/workloads?limit=", "limit"),
    ("list_limit_huge", "/v1/workloads?limit=99999999999999999999999", "limit"),
    ("list_limit_hex", "/v1/workloads?limit=0x10", "limit"),
    ("list_limit_spaces", "/v1/workloads?limit=%2010", "limit"),
    ("list_limit_plus_sign_decoded", "/v1/workloads?limit=+5", "limit"),
    ("list_status_unknown", "/v1/workloads?status=done", "status"),
    ("list_status_uppercase", "/v1/workloads?status=COMPLETED", "status"),
    ("list_isolation_unknown", "/v1/workloads?isolation=docker", "isolation"),
    ("list_runtime_unknown", "/v1/workloads?runtime=ruby", "runtime"),
    ("list_cursor_garbage", "/v1/workloads?cursor=abc", "cursor"),
    ("list_cursor_traversal", "/v1/workloads?cursor=..%2f..%2fetc", "cursor"),
    ("list_cursor_sql", "/v1/workloads?cursor=%27%20OR%201%3D1--", "cursor"),
    ("list_cursor_ulid_bad_char", "/v1/workloads?cursor=01JKQX7V8MZRN3B4HTGFWDCS9U", "cursor"),
    ("history_after_negative", "/v1/workloads/%s/logs/history?after=-1" % UNKNOWN, "after"),
    ("history_after_word", "/v1/workloads/%s/logs/history?after=x" % UNKNOWN, "after"),
    ("history_after_huge", "/v1/workloads/%s/logs/history?after=99999999999999999999" % UNKNOWN, "after"),
    ("history_limit_zero", "/v1/workloads/%s/logs/history?limit=0" % UNKNOWN, "limit"),
    ("history_limit_10001", "/v1/workloads/%s/logs/history?limit=10001" % UNKNOWN, "limit"),
    ("history_limit_fraction", "/v1/workloads/%s/logs/history?limit=2.5" % UNKNOWN, "limit"),
]
for name, path, field in QUERY:
    add("query", name, raw("GET", path), 422, field=field, code="invalid_field")

# -- 7. framing and request smuggling -----------------------------------------------
SMUGGLED = b"GET /v1/workloads/SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n"
FRAMING = [
    # Kiln refuses ambiguous body framing itself: JSON 400, then closes the connection,
    # so nothing after the headers is read as a next request.
    ("cl_and_te", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400, "kiln"),
    ("te_and_cl", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n0\r\n\r\n" + SMUGGLED, 400, "kiln"),
    ("cl_and_te_on_get", lambda h, a: b"GET /healthz HTTP/1.1\r\n" + h +
     b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "kiln"),
    ("duplicate_cl_different", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Content-Length: 2\r\nContent-Length: 51\r\n\r\n{}" + SMUGGLED, 400, "kiln"),
    ("duplicate_cl_same", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400, "kiln"),
    ("duplicate_cl_case", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Content-Length: 2\r\ncontent-length: 2\r\n\r\n{}", 400, "kiln"),
    ("te_gzip", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: gzip\r\n\r\nabc", 400, "kiln"),
    ("te_gzip_chunked", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, "kiln"),
    ("te_chunked_twice_list", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400, "kiln"),
    ("te_two_headers", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", 400, "kiln"),
    ("te_identity", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: identity\r\n\r\n{}", 400, "kiln"),
    ("te_chunked_misspelt", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: chunk\r\n\r\n0\r\n\r\n", 400, "kiln"),
    ("te_empty", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: \r\nContent-Length: 2\r\n\r\n{}", 400, "kiln"),
    ("te_vertical_tab", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400, "kiln"),
    ("te_in_http10", lambda h, a: b"POST /v1/workloads HTTP/1.0\r\n" + h + a +
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "kiln"),
    ("space_before_colon_cl", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Content-Length : 48\r\n\r\n" + SMUGGLED, 400, "kiln"),
    ("space_before_colon_te", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding : chunked\r\nContent-Length: 2\r\n\r\n{}", 400, "kiln"),
    ("tab_before_colon", lambda h, a: b"GET /healthz HTTP/1.1\r\n" + h + b"X-A\t: 1\r\n\r\n", 400, "kiln"),
    ("space_in_header_name", lambda h, a: b"GET /healthz HTTP/1.1\r\n" + h + b"X A: 1\r\n\r\n", 400, "kiln"),
    ("bracket_in_header_name", lambda h, a: b"GET /healthz HTTP/1.1\r\n" + h + b"X(A): 1\r\n\r\n", 400, "kiln"),
    # (libmicrohttpd 0.9.75 drops a nameless header line when it is the last one.)
    ("empty_header_name", lambda h, a: b"GET /healthz HTTP/1.1\r\n: nameless\r\n" + h + b"\r\n", 400, "kiln"),
    ("fold_content_length", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Content-Length: 2\r\n x\r\n\r\n{}", 400, "kiln"),
    ("fold_content_length_digits", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Content-Length: 1\r\n 0\r\n\r\n0123456789", 400, "kiln"),
    ("fold_transfer_encoding", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", 400, "kiln"),
    ("fold_ordinary_header", lambda h, a: b"GET /healthz HTTP/1.1\r\n" + h + b"X-A: 1\r\n 2\r\n\r\n", 400, "kiln"),
    ("fold_with_tab", lambda h, a: b"GET /healthz HTTP/1.1\r\n" + h + b"X-A: 1\r\n\t2\r\n\r\n", 400, "kiln"),
    ("fold_host", lambda h, a: b"GET /healthz HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", 400, "kiln"),
    ("missing_host_http11", lambda h, a: b"GET /healthz HTTP/1.1\r\n\r\n", 400, "kiln"),
    ("two_hosts", lambda h, a: b"GET /healthz HTTP/1.1\r\n" + h + b"Host: evil.example\r\n\r\n", 400, "kiln"),
    ("host_with_space", lambda h, a: b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "kiln"),
    ("host_with_slash", lambda h, a: b"GET /healthz HTTP/1.1\r\nHost: evil.example/x\r\n\r\n", 400, "kiln"),
    ("host_with_userinfo", lambda h, a: b"GET /healthz HTTP/1.1\r\nHost: user@evil.example\r\n\r\n", 400, "kiln"),
    # libmicrohttpd's own parser answers these before Kiln sees the request.
    ("cl_negative", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a + b"Content-Length: -1\r\n\r\n", 400, "mhd"),
    ("cl_plus_sign", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a + b"Content-Length: +2\r\n\r\n{}", 400, "mhd"),
    ("cl_hex", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a + b"Content-Length: 0x2\r\n\r\n{}", 400, "mhd"),
    ("cl_list", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a + b"Content-Length: 2, 2\r\n\r\n{}", 400, "mhd"),
    ("cl_empty", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a + b"Content-Length:\r\n\r\n", 400, "mhd"),
    ("cl_word", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a + b"Content-Length: two\r\n\r\n{}", 400, "mhd"),

    ("cl_beyond_2_64", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Content-Length: 18446744073709551616\r\n\r\n", 413, "mhd"),
    ("chunk_size_negative", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n", 400, "mhd"),
    ("chunk_size_not_hex", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "mhd"),
    ("chunk_size_beyond_2_64", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: chunked\r\n\r\n1FFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n", 413, "mhd"),
    ("chunk_longer_than_size", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: chunked\r\n\r\n1\r\n{}\r\n0\r\n\r\n", 400, "mhd"),
    ("chunk_without_crlf", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n", 400, "mhd"),
    ("chunk_smuggled_request", lambda h, a: b"POST /v1/workloads HTTP/1.1\r\n" + h + a +
     b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nG\r\n\r\n" + SMUGGLED, 400, "mhd"),
    ("request_line_no_version", lambda h, a: b"GET\r\n" + h + b"\r\n", None, "mhd"),
    ("request_line_http09", lambda h, a: b"GET /healthz\r\n\r\n", 400, "mhd"),
    ("request_line_bad_version", lambda h, a: b"GET /healthz HTTP/x.y\r\n" + h + b"\r\n", 400, "mhd"),
    ("request_line_lowercase_version", lambda h, a: b"GET /healthz http/1.1\r\n" + h + b"\r\n", 400, "mhd"),
    ("header_without_colon", lambda h, a: b"GET /healthz HTTP/1.1\r\n" + h + b"Bogus\r\n\r\n", 400, "mhd"),
    ("bare_cr_line_end", lambda h, a: b"GET /healthz HTTP/1.1\r" + h + b"\r\n", 400, "mhd"),
    ("fold_before_first_header", lambda h, a: b"GET /healthz HTTP/1.1\r\n folded\r\n" + h + b"\r\n", 400, "mhd"),
    ("binary_garbage", lambda h, a: bytes(range(1, 256)) + b"\r\n\r\n", None, "mhd"),
    ("tls_client_hello", lambda h, a: bytes.fromhex("16030100a5010000a10303") + b"\x00" * 32 + b"\r\n\r\n", None, "mhd"),
    ("request_line_only_method_and_crlf", lambda h, a: b"DELETE\r\n\r\n", None, "mhd"),
    ("http2_preface", lambda h, a: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "mhd"),
    ("http_version_2", lambda h, a: b"GET /healthz HTTP/2.0\r\n" + h + b"\r\n", 505, "mhd"),
    ("http_version_3", lambda h, a: b"GET /healthz HTTP/3.0\r\n" + h + b"\r\n", 505, "mhd"),
]
for name, fn, status, who in FRAMING:
    add("smuggling", name, rawbytes(fn), status, json_error=(who == "kiln"),
        code="bad_request" if who == "kiln" and status == 400 else None, close=True, answered_by=who)

# -- 8. sizes: bodies, URLs, header floods ---------------------------------------------
LIMIT = 10485760
add("sizes", "declared_body_over_limit", raw("POST", "/v1/workloads", [("Content-Length", str(LIMIT + 1))], None),
    413, code="body_too_large", close=True, note="refused before any of the body is read")
add("sizes", "declared_body_int64_max", raw("POST", "/v1/workloads", [("Content-Length", "9223372036854775807")], None),
    413, code="body_too_large", close=True)
add("sizes", "declared_body_2_63", raw("POST", "/v1/workloads", [("Content-Length", "9223372036854775808")], None),
    413, code="body_too_large", close=True, note="beyond Int64, within UInt64")
add("sizes", "declared_body_2_64_minus_1", raw("POST", "/v1/workloads", [("Content-Length", "18446744073709551615")], None),
    413, code="body_too_large", close=True)
add("sizes", "declared_body_over_limit_async", raw("POST", "/v1/workloads/async", [("Content-Length", str(LIMIT + 1))], None),
    413, code="body_too_large", close=True)
add("sizes", "declared_and_sent_body_over_limit", post(b"x" * (LIMIT + 1)), 413, code="body_too_large", close=True)


def chunked_over_limit(h, a):
    chunk = b"x" * 65536
    n = LIMIT // len(chunk) + 1
    return (b"POST /v1/workloads HTTP/1.1\r\n" + h + a + b"Transfer-Encoding: chunked\r\n\r\n" +
            (b"10000\r\n" + chunk + b"\r\n") * n + b"0\r\n\r\n")


add("sizes", "chunked_body_over_limit", rawbytes(chunked_over_limit), 413, code="body_too_large", close=True,
    note="undeclared: read and discarded to its end, then refused")
add("sizes", "url_20_kib", raw("GET", "/v1/workloads/" + "A" * 20480), 414, json_error=False, close=True, answered_by="mhd")
add("sizes", "url_1_mib", raw("GET", "/" + "a" * (1 << 20)), 414, json_error=False, close=True, answered_by="mhd")
add("sizes", "query_20_kib", raw("GET", "/v1/workloads?cursor=" + "A" * 20480), 414, json_error=False, close=True, answered_by="mhd")
add("sizes", "header_value_20_kib", raw("GET", "/healthz", [("X-Big", "v" * 20480)]), 431, json_error=False, close=True, answered_by="mhd")
add("sizes", "header_flood_2000", raw("GET", "/healthz", [("X-Flood-%d" % i, "1") for i in range(2000)]), 431,
    json_error=False, close=True, answered_by="mhd")
add("sizes", "header_flood_same_name", raw("GET", "/healthz", [("X-Same", "v" * 40)] * 1000), 431,
    json_error=False, close=True, answered_by="mhd")
add("sizes", "cookie_flood", raw("GET", "/healthz", [("Cookie", "; ".join("c%d=%d" % (i, i) for i in range(3000)))]), 431,
    json_error=False, close=True, answered_by="mhd")
add("sizes", "authorization_20_kib", raw("GET", "/v1/stats", [("Authorization", "Bearer " + "t" * 20480)], auth=False), 431,
    json_error=False, close=True, answered_by="mhd")
add("sizes", "header_name_20_kib", raw("GET", "/healthz", [("X" * 20480, "1")]), 431, json_error=False, close=True, answered_by="mhd")
add("sizes", "folded_header_20_kib", rawbytes(lambda h, a: b"GET /healthz HTTP/1.1\r\n" + h + b"X-Fold: a\r\n" +
                                              b" b\r\n" * 7000 + b"\r\n"), 431, json_error=False, close=True, answered_by="mhd")
# Over Kiln's 3 KiB limit on a request's line and headers (the rest of the connection's
# 4 KiB pool holds the answer): Kiln's own 431, then the connection closes.
add("sizes", "header_value_3_kib", raw("GET", "/v1/workloads/" + UNKNOWN, [("X-Pad", "p" * 3072)]), 431,
    code="headers_too_large", close=True)
add("sizes", "id_3100_chars", raw("GET", "/v1/workloads/" + "A" * 3100), 431, code="headers_too_large", close=True)
# Big, but within every limit: judged on content.
add("sizes", "header_value_2_5_kib", raw("GET", "/v1/workloads/" + UNKNOWN, [("X-Pad", "p" * 2560)]), 404, code="not_found")
add("sizes", "header_flood_within_limit", raw("GET", "/v1/workloads/" + UNKNOWN, [("X-F-%d" % i, "1") for i in range(20)]),
    404, code="not_found")
add("sizes", "url_8_kib", raw("GET", "/v1/workloads/" + "A" * 8192), 414, json_error=False, close=True, answered_by="mhd")
add("sizes", "header_value_8_kib", raw("GET", "/healthz", [("X-Big", "v" * 8192)]), 431, json_error=False, close=True, answered_by="mhd")

# -- 9. auth (only with --token: every /v1 request needs the bearer token) ---------------
AUTH = [
    ("no_token", []),
    ("wrong_token", [("Authorization", "Bearer wrong")]),
    ("token_prefix_only", [("Authorization", "Bearer")]),
    ("basic_scheme", [("Authorization", "Basic dXNlcjpwYXNz")]),
    ("token_without_scheme", None),
    ("empty_authorization", [("Authorization", "")]),
    ("token_with_suffix", "SUFFIX"),
    ("token_truncated", "TRUNC"),
]


def auth_case(kind):
    def build(ctx):
        hs = [("Host", "%s:%d" % (ctx.host, ctx.port))]
        if kind is None:
            hs.append(("Authorization", ctx.token))
        elif kind == "SUFFIX":
            hs.append(("Authorization", "Bearer " + ctx.token + "x"))
        elif kind == "TRUNC":
            hs.append(("Authorization", "Bearer " + ctx.token[:-1]))
        else:
            hs += kind
        return b"GET /v1/stats HTTP/1.1\r\n" + b"".join(("%s: %s\r\n" % kv).encode() for kv in hs) + b"\r\n"
    return build


AUTH_CASES = [Case("auth", name, auth_case(kind), 401, code="unauthorized") for name, kind in AUTH]
AUTH_CASES.append(Case("auth", "query_token_outside_logs", lambda ctx: (
    "GET /v1/stats?access_token=%s HTTP/1.1\r\nHost: x\r\n\r\n" % ctx.token).encode(), 401, code="unauthorized"))
AUTH_CASES.append(Case("auth", "post_without_token", post('{"runtime": "shell", "code": "true"}', auth=False),
                       401, code="unauthorized"))


# ---------------------------------------------------------------------------- checks


def check(case, reply):
    """Returns a list of problems (empty when the case passed)."""
    problems = []
    if case.status is None:
        # libmicrohttpd drops what is not HTTP at all; the connection must be closed.
        if reply.status is not None:
            return ["answered %s, expected libmicrohttpd to close without an answer" % reply.status]
        return [] if reply.closed else [reply.error or "connection left open"]
    if reply.error and reply.status is None:
        return [reply.error]
    if reply.status != case.status:
        problems.append("status %s, expected %s" % (reply.status, case.status))
    if reply.error:
        problems.append(reply.error)
    if case.json_error:
        ctype = reply.headers.get("content-type", "")
        if not ctype.startswith("application/json"):
            problems.append("content-type %r, expected application/json" % ctype)
        try:
            doc = json.loads(reply.body.decode("utf-8"))
            err = doc["error"]
            if not isinstance(err.get("code"), str) or not isinstance(err.get("message"), str):
                problems.append("error body lacks code/message: %r" % reply.body[:200])
            if case.code and err.get("code") != case.code:
                problems.append("error code %r, expected %r" % (err.get("code"), case.code))
            if case.field and err.get("field") != case.field:
                problems.append("error field %r, expected %r" % (err.get("field"), case.field))
        except (ValueError, KeyError, TypeError, AttributeError):
            problems.append("body is not a JSON error: %r" % reply.body[:200])
    if case.allow and not reply.headers.get("allow"):
        problems.append("405 without an Allow header")
    if case.close:
        if not reply.closed:
            problems.append("connection left open after the answer")
        if reply.extra.startswith(b"HTTP/"):
            problems.append("a second response followed: %r" % reply.extra[:80])
    if 500 <= (reply.status or 0) and case.status < 500:
        problems.append("server error")
    return problems


# Seconds /healthz may take, after any case, before the server counts as stuck
# (--liveness-timeout; the test suite gives a busy CI machine more).
LIVENESS = 1.0
# Seconds a case's complete answer may take (--answer-timeout).
ANSWER_TIMEOUT = 5.0


def healthz(host, port, timeout=None):
    timeout = LIVENESS if timeout is None else timeout
    t0 = time.monotonic()
    try:
        r = exchange(host, port, ("GET /healthz HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port)).encode(), timeout=timeout)
    except OSError as e:
        return False, "healthz: %r" % e, time.monotonic() - t0
    dt = time.monotonic() - t0
    if r.status != 200:
        return False, "healthz: status %s (%s)" % (r.status, r.error), dt
    return True, "", dt


def workload_total(ctx):
    hs = "Host: %s:%d\r\n" % (ctx.host, ctx.port)
    hs += "".join("%s: %s\r\n" % kv for kv in ctx.auth())
    r = exchange(ctx.host, ctx.port, ("GET /v1/stats HTTP/1.1\r\n%s\r\n" % hs).encode())
    if r.status != 200:
        raise RuntimeError("GET /v1/stats answered %s: %r" % (r.status, r.body[:200]))
    return json.loads(r.body)["workloads"]["total"]


# ---------------------------------------------------------------------------- slowloris


class Slow(threading.Thread):
    """A client that sends its request a byte at a time (or nothing) and notes when the
    server drops it. The server must drop it within its request deadline."""

    def __init__(self, ctx, name, prefix, trickle, budget):
        super().__init__(daemon=True)
        self.ctx = ctx
        self.name = name
        self.prefix = prefix
        self.trickle = trickle          # bytes sent one per second after prefix (None: silent)
        self.budget = budget
        self.dropped_after = None
        self.answer = b""
        self.error = None

    def run(self):
        import select
        t0 = time.monotonic()
        try:
            s = socket.create_connection((self.ctx.host, self.ctx.port), timeout=5)
            if self.prefix:
                s.sendall(self.prefix)
            i = 0
            while time.monotonic() - t0 < self.budget:
                ready, _, _ = select.select([s], [], [], 1.0)
                if ready:
                    try:
                        d = s.recv(4096)
                    except (ConnectionResetError, OSError):
                        d = b""
                    if not d:
                        self.dropped_after = time.monotonic() - t0
                        break
                    self.answer += d
                    continue
                if self.trickle is not None:
                    try:
                        s.send(self.trickle[i % len(self.trickle):i % len(self.trickle) + 1])
                    except (BrokenPipeError, ConnectionResetError, OSError):
                        self.dropped_after = time.monotonic() - t0
                        break
                    i += 1
            s.close()
        except OSError as e:
            self.error = repr(e)


class Crowd(threading.Thread):
    """Many connections at once that each send half a request line and then nothing:
    all must be dropped by the deadline while the server goes on serving."""

    def __init__(self, ctx, name, count, budget):
        super().__init__(daemon=True)
        self.ctx = ctx
        self.name = name
        self.count = count
        self.budget = budget
        self.dropped_after = None
        self.answer = b""
        self.error = None
        self.open_at_end = 0

    def run(self):
        import select
        t0 = time.monotonic()
        socks = []
        try:
            for _ in range(self.count):
                s = socket.create_connection((self.ctx.host, self.ctx.port), timeout=5)
                s.sendall(b"GET /heal")
                socks.append(s)
            live = set(socks)
            while live and time.monotonic() - t0 < self.budget:
                ready, _, _ = select.select(list(live), [], [], 1.0)
                for s in ready:
                    try:
                        d = s.recv(4096)
                    except OSError:
                        d = b""
                    if d:
                        self.answer += d
                    else:
                        live.discard(s)
            self.open_at_end = len(live)
            if not live:
                self.dropped_after = time.monotonic() - t0
        except OSError as e:
            self.error = repr(e)
        finally:
            for s in socks:
                s.close()


def slow_clients(ctx, budget):
    host = ("Host: %s:%d\r\n" % (ctx.host, ctx.port)).encode()
    auth = b"".join(("%s: %s\r\n" % kv).encode() for kv in ctx.auth())
    return [
        Slow(ctx, "slowloris_header_trickle", b"GET /healthz HTTP/1.1\r\n" + host + b"X-Slow: ", b"abcdefgh", budget),
        Slow(ctx, "slowloris_header_lines", b"GET /healthz HTTP/1.1\r\n" + host, b"X-a: b\r\n", budget),
        Slow(ctx, "slowloris_request_line", b"G", b"ET /healthz HTTP/1.1", budget),
        Slow(ctx, "slowloris_silent_connection", b"", None, budget),
        Slow(ctx, "slowloris_partial_then_silent", b"GET /healthz HTTP/1.1\r\n" + host, None, budget),
        Slow(ctx, "slowloris_body_trickle", b"POST /v1/workloads HTTP/1.1\r\n" + host + auth +
             b"Content-Length: 100000\r\n\r\n{", b"x", budget),
        Slow(ctx, "slowloris_body_stalled", b"POST /v1/workloads HTTP/1.1\r\n" + host + auth +
             b"Content-Length: 1000\r\n\r\n{\"runtime\"", None, budget),
        Slow(ctx, "slowloris_chunked_trickle", b"POST /v1/workloads HTTP/1.1\r\n" + host + auth +
             b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n", budget),
        Crowd(ctx, "slowloris_crowd_of_300", 300, budget),
    ]


# ---------------------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("address", help="HOST:PORT of a running kiln server")
    p.add_argument("--token", help="the server's KILN_API_TOKEN, when it has one (adds the 401 cases)")
    p.add_argument("--only", help="run only cases whose name contains this")
    p.add_argument("--slow-deadline", type=float, default=30.0,
                   help="the server's request deadline in seconds (slow clients must be gone by then + 5 s)")
    p.add_argument("--no-slow", action="store_true", help="skip the slowloris clients")
    p.add_argument("--liveness-timeout", type=float, default=1.0,
                   help="seconds /healthz may take after a case, and slow clients may outlive their "
                        "deadline beyond 5 s, before it is a failure (default 1)")
    p.add_argument("--answer-timeout", type=float, default=5.0,
                   help="seconds a case's complete answer may take (default 5)")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args()
    global LIVENESS, ANSWER_TIMEOUT
    LIVENESS = a.liveness_timeout
    ANSWER_TIMEOUT = a.answer_timeout
    host, _, port = a.address.rpartition(":")
    ctx = Ctx(host or "127.0.0.1", int(port), a.token)
    cases = CASES + (AUTH_CASES if a.token else [])
    if a.only:
        cases = [c for c in cases if a.only in c.name or a.only == c.category]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"

    t_start = time.monotonic()
    ok, why, _ = healthz(ctx.host, ctx.port, timeout=5)
    if not ok:
        print("FAIL server not reachable: " + why)
        return 1
    total_before = workload_total(ctx)

    slow = [] if a.no_slow or a.only else slow_clients(ctx, a.slow_deadline + 8)
    for s in slow:
        s.start()

    failures = []
    per_category = {}
    worst_health = 0.0
    for case in cases:
        data = case.data(ctx) if callable(case.data) else case.data
        try:
            reply = exchange(ctx.host, ctx.port, data, head_request=case.head, want_close=case.close)
            problems = check(case, reply)
        except OSError as e:
            problems = ["cannot talk to the server: %r" % e]
            reply = None
        ok, why, dt = healthz(ctx.host, ctx.port)
        worst_health = max(worst_health, dt)
        if not ok:
            problems.append("server not healthy afterwards: " + why)
        cat = per_category.setdefault(case.category, [0, 0])
        cat[0] += 1
        who = "" if case.answered_by == "kiln" else " [%s]" % case.answered_by
        if problems:
            failures.append(case.name)
            print("FAIL %s/%s%s: %s" % (case.category, case.name, who, "; ".join(problems)))
        else:
            cat[1] += 1
            extra = (" (%.2fs)" % reply.seconds) if a.verbose and reply else ""
            shown = "-" if case.status is None else str(case.status)
            print("PASS %s/%s -> %s%s%s" % (case.category, case.name, shown, who, extra))
        sys.stdout.flush()

    # Slow clients: dropped within the deadline, while everyone else was served. Keep
    # checking health while waiting for them.
    if slow:
        while any(s.is_alive() for s in slow):
            ok, why, dt = healthz(ctx.host, ctx.port)
            worst_health = max(worst_health, dt)
            if not ok:
                failures.append("healthz_during_slowloris")
                print("FAIL slowloris/healthz_during_slowloris: " + why)
                break
            time.sleep(0.5)
        for s in slow:
            s.join(timeout=a.slow_deadline + 10)
            cat = per_category.setdefault("slowloris", [0, 0])
            cat[0] += 1
            limit = a.slow_deadline + 5 + max(0.0, LIVENESS - 1.0)
            if s.error:
                problem = s.error
            elif s.dropped_after is None:
                problem = "still connected after %.0f s (deadline %.0f s)%s" % (
                    s.budget, a.slow_deadline, " (%d of %d)" % (s.open_at_end, s.count) if isinstance(s, Crowd) else "")
            elif s.dropped_after > limit:
                problem = "dropped only after %.1f s (deadline %.0f s)" % (s.dropped_after, a.slow_deadline)
            elif s.answer and not (s.answer.startswith(b"HTTP/1.1 408") or s.answer.startswith(b"HTTP/1.1 400")):
                problem = "unexpected answer %r" % s.answer[:80]
            else:
                problem = None
            if problem:
                failures.append(s.name)
                print("FAIL slowloris/%s: %s" % (s.name, problem))
            else:
                cat[1] += 1
                print("PASS slowloris/%s -> dropped after %.1f s" % (s.name, s.dropped_after))

    try:
        total_after = workload_total(ctx)
        if total_after != total_before:
            failures.append("no_workload_created")
            print("FAIL corpus/no_workload_created: %d workloads before, %d after" % (total_before, total_after))
        else:
            print("PASS corpus/no_workload_created (%d workloads before and after)" % total_after)
    except (OSError, RuntimeError, ValueError) as e:
        failures.append("no_workload_created")
        print("FAIL corpus/no_workload_created: %r" % e)
    if worst_health > LIVENESS:
        failures.append("healthz_latency")
        print("FAIL corpus/healthz_latency: slowest /healthz took %.2f s" % worst_health)

    ran = sum(c[0] for c in per_category.values())
    passed = sum(c[1] for c in per_category.values())
    print("summary: %d/%d cases passed in %.1f s; slowest /healthz %.3f s; %s" % (
        passed, ran, time.monotonic() - t_start, worst_health,
        ", ".join("%s %d/%d" % (k, v[1], v[0]) for k, v in per_category.items())))
    if failures:
        print("failed: " + " ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
