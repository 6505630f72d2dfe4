"""What the benchmark scripts in docs/ share: loopback ports, admin HTTP, bounded waits."""
import socket
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(addr, path, timeout=2.0):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def wait(what, condition, limit=60.0, pause=0.01):
    """Polls `condition` until it is truthy (its value is returned); gives up after `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(pause)
    raise SystemExit(f"timed out waiting until {what}")
