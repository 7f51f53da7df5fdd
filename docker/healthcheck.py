#!/usr/bin/python3 -I
"""The image's HEALTHCHECK: GET /healthz on the port of KILN_LISTEN; exit 0 on a 200.

python3's urllib, because the slim image has no curl. Proxy variables are ignored (the
request never leaves the container), and a wildcard listen address is reached on loopback.
Set the address with KILN_LISTEN, not `serve --listen`, or this checks the wrong port.
"""
import os
import sys
import urllib.request

listen = os.environ.get("KILN_LISTEN") or "0.0.0.0:8080"
host, _, port = listen.rpartition(":")
host = host.strip("[]")
host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
url = "http://%s:%s/healthz" % ("[%s]" % host if ":" in host else host, port)
try:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=4) as response:
        status = response.status
except Exception as e:  # refused, timeout, HTTP error: unhealthy
    print("%s: %s" % (url, e))
    sys.exit(1)
print("%s: %d" % (url, status))
sys.exit(0 if status == 200 else 1)
