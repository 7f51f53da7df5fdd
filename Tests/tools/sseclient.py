#!/usr/bin/env python3
"""A raw-socket SSE client for Kiln's integration tests.

It speaks HTTP/1.1 itself (no library), so the tests see the bytes the server sends:
status line, headers, chunked framing and the SSE fields, byte by byte. It prints one
JSON document on stdout describing what each connection received.
"""
import argparse
import asyncio
import json
import os
import socket
import sys
import time


class Conn:
    def __init__(self):
        self.status = None
        self.headers = {}
        self.events = []          # dicts: id, event, data (list of data fields)
        self.comments = 0
        self.ended = False        # saw "event: end"
        self.eof = False          # server closed the response cleanly (last chunk)
        self.raw = bytearray()    # body bytes after de-chunking
        self.error = None
        self.bad_framing = []


def parse_sse(conn, text_buffer, final=False):
    """Consumes complete events from text_buffer; returns the unconsumed rest."""
    while True:
        idx = text_buffer.find(b"\n\n")
        if idx < 0:
            return text_buffer
        block, text_buffer = text_buffer[:idx], text_buffer[idx + 2:]
        event = {"id": None, "event": "message", "data": []}
        only_comments = True
        for line in block.split(b"\n"):
            if b"\r" in line:
                conn.bad_framing.append(repr(line[:80]))
            if line.startswith(b":"):
                conn.comments += 1
                continue
            only_comments = False
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                conn.bad_framing.append("invalid utf-8")
                value = value.decode("utf-8", "replace")
            f = field.decode("ascii", "replace")
            if f == "data":
                event["data"].append(value)
            elif f == "id":
                event["id"] = value
            elif f == "event":
                event["event"] = value
            else:
                conn.bad_framing.append("unknown field " + f)
        if not only_comments:
            conn.events.append(event)
            if event["event"] == "end":
                conn.ended = True


async def one(args, index, results, start_gate):
    conn = Conn()
    results[index] = conn
    await start_gate.wait()
    try:
        reader, writer = await asyncio.open_connection(args.host, args.port)
        sock = writer.get_extra_info("socket")
        if args.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
        headers = [f"GET {args.path} HTTP/1.1", f"Host: {args.host}:{args.port}", "Accept: text/event-stream"]
        headers += args.header or []
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode())
        await writer.drain()
        status_line = await reader.readline()
        conn.status = int(status_line.split()[1])
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            conn.headers[k.strip().lower()] = v.strip()
        chunked = conn.headers.get("transfer-encoding", "").lower() == "chunked"
        length = int(conn.headers.get("content-length", "0")) if not chunked else None
        text = b""
        data_events = 0
        paused = False
        if not chunked:
            if length:
                conn.raw += await reader.readexactly(length)
            conn.eof = True
        while chunked:
            if args.pause_after is not None and not paused and len(conn.raw) >= args.pause_after:
                paused = True
                # Stop reading: the socket buffers fill and the server must cope.
                while not os.path.exists(args.resume_file):
                    await asyncio.sleep(0.05)
            size_line = await reader.readline()
            if not size_line:
                break
            size = int(size_line.strip().split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                conn.eof = True
                break
            chunk = await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                conn.bad_framing.append("chunk not followed by CRLF")
            conn.raw += chunk
            text += chunk
            before = len(conn.events)
            text = parse_sse(conn, text)
            data_events += sum(1 for e in conn.events[before:] if e["event"] != "end")
            if args.max_events is not None and data_events >= args.max_events:
                # Keep only what this client processed before it vanished.
                extra = data_events - args.max_events
                if extra:
                    kept = [e for e in conn.events if e["event"] != "end"][:args.max_events]
                    conn.events = kept
                    conn.ended = False
                # Vanish mid-stream, as a client that is killed would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                break
            if args.max_seconds and time.time() - T0 > args.max_seconds:
                break
        writer.close()
    except Exception as e:  # reported, not raised: the test decides
        conn.error = repr(e)


def summary(conn, args):
    ids = [e["id"] for e in conn.events if e["event"] != "end"]
    d = {
        "status": conn.status,
        "headers": conn.headers,
        "comments": conn.comments,
        "ended": conn.ended,
        "eof": conn.eof,
        "error": conn.error,
        "bad_framing": conn.bad_framing[:5],
        "count": len(ids),
    }
    end = [e for e in conn.events if e["event"] == "end"]
    if end:
        d["end"] = {"id": end[-1]["id"], "data": "\n".join(end[-1]["data"])}
    if args.summary:
        nums = [int(i) for i in ids if i is not None]
        d["first"] = nums[0] if nums else None
        d["last"] = nums[-1] if nums else None
        d["in_order"] = nums == list(range(nums[0], nums[0] + len(nums))) if nums else True
    else:
        d["events"] = [{"id": e["id"], "data": e["data"]} for e in conn.events if e["event"] != "end"]
    return d


async def main(args):
    results = [None] * args.count
    gate = asyncio.Event()
    tasks = [asyncio.create_task(one(args, i, results, gate)) for i in range(args.count)]
    await asyncio.sleep(0)
    gate.set()
    if args.ready_file:
        # Tell the test once every connection has its headers.
        while any(r is None or r.status is None for r in results) and not all(t.done() for t in tasks):
            await asyncio.sleep(0.02)
        open(args.ready_file, "w").close()
    await asyncio.gather(*tasks)
    if args.raw_file:
        with open(args.raw_file, "wb") as f:
            f.write(bytes(results[0].raw))
    json.dump({"connections": [summary(c, args) for c in results]}, sys.stdout)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--header", action="append")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--max-events", type=int)
    p.add_argument("--max-seconds", type=float)
    p.add_argument("--pause-after", type=int)
    p.add_argument("--resume-file")
    p.add_argument("--rcvbuf", type=int)
    p.add_argument("--ready-file")
    p.add_argument("--raw-file")
    p.add_argument("--summary", action="store_true")
    a = p.parse_args()
    rest = a.url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    a.host, _, port = hostport.partition(":")
    a.port = int(port)
    a.path = "/" + path
    T0 = time.time()
    asyncio.run(main(a))
