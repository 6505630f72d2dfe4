#!/usr/bin/env python3
"""Fleet figures, direct from the core vs through NATS, side by side in one run (release binaries).

    cargo build --release -p merchant-edge -p merchant-loadgen
    python3 docs/fleet-bench.py [--seconds 20] [--rate 2000] [--churn-rate 20] [--merchants 100000]

Starts a core simulator, a nats-server with JetStream (temporary store) and, per scenario, edges
(`feed.source = "core"` or `"nats"`) and two relays, all on loopback, and prints:

1. core load with 1, 3 and 10 edges: WatchChanges streams open at the core and ListMerchants calls the
   edges' start cost (warm start), direct vs NATS;
2. change at the core -> FOUND, under load: one `merchant-loadgen run --churn-*` per edge, the three
   at once (each onboards its own merchants and measures from UpsertMerchant returning to its edge
   answering FOUND), p50/p99 per edge and the worst of the three, direct vs NATS;
3. relay failover: with onboardings flowing, the relay that published most in the last second is
   killed (SIGKILL); the time from the kill to the next notice applied on every edge, against the
   same measurement at a moment without a kill.

Needs nats-server (Debian package nats-server) and grpcurl. Everything is bounded in time, and every
process it starts is stopped when it ends.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import free_port, http, wait  # noqa: E402


def metric(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


class Fleet:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="fleet-bench-")
        self.procs = []
        self.core = f"127.0.0.1:{free_port()}"
        self.nats = f"nats://127.0.0.1:{free_port()}"

    def spawn(self, argv, name):
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self, proc, sig=signal.SIGTERM):
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.remove(proc)

    def close(self):
        for proc in list(self.procs):
            self.stop(proc)

    def start_base(self):
        self.spawn([self.args.bin, "core-sim", "--listen", self.core, "--merchants", str(self.args.merchants),
                    "--history", "1000000"], "core")
        wait("the core answers", lambda: self.stats() is not None)
        port = self.nats.rsplit(":", 1)[1]
        self.spawn(["nats-server", "-js", "-sd", os.path.join(self.tmp, "nats"), "-a", "127.0.0.1", "-p", port],
                   "nats")
        wait("nats-server listens", lambda: socket.socket().connect_ex(("127.0.0.1", int(port))) == 0)

    def stats(self):
        out = subprocess.run(["grpcurl", "-plaintext", "-d", "{}", self.core, "merchant.v1.CoreAdmin/GetStats"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        # grpcurl leaves out fields at their zero value, and prints 64-bit integers as strings.
        stats = {"listMerchantsCalls": 0, "watchStreamsOpen": 0, "headSequence": 0}
        stats.update(json.loads(out.stdout))
        return {k: int(v) if str(v).isdigit() else v for k, v in stats.items()}

    def start_relay(self, n):
        admin = f"127.0.0.1:{free_port()}"
        proc = self.spawn([self.args.bin, "relay", "--core", f"http://{self.core}", "--nats", self.nats,
                           "--admin", admin], f"relay-{n}-{time.monotonic_ns()}")
        wait("the relay is ready", lambda: http(admin, "/readyz")[0] == 200)
        return proc, admin

    def start_edge(self, n, source):
        grpc, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        config = os.path.join(self.tmp, f"edge-{source}-{n}.toml")
        with open(config, "w") as f:
            f.write(f'[server]\nlisten = "{grpc}"\n[admin]\nlisten = "{admin}"\n'
                    f'[upstream]\nendpoint = "http://{self.core}"\n'
                    f'[feed]\nsource = "{source}"\nnats_url = "{self.nats}"\n'
                    f'[reload]\nwatch_file = false\n[log]\nlevel = "warn"\n')
        proc = self.spawn([self.args.bin, "serve", "--config", config], f"edge-{source}-{n}")
        return proc, grpc, admin

    def wait_edges(self, edges, source):
        for _, _, admin in edges:
            wait("the edge is ready and following",
                 lambda: (lambda r: r[0] == 200 and "feed: connected" in r[1] and f"source {source}" in r[1])(
                     http(admin, "/readyz")))


def core_load(fleet, results):
    for source in ("core", "nats"):
        relays = [fleet.start_relay(n) for n in range(2)] if source == "nats" else []
        for count in (1, 3, 10):
            before = fleet.stats()
            edges = [fleet.start_edge(n, source) for n in range(count)]
            fleet.wait_edges(edges, source)
            after = fleet.stats()
            results.append({"part": "core load", "source": source, "edges": count,
                            "watch_streams_open": after["watchStreamsOpen"],
                            "list_merchants_calls": after["listMerchantsCalls"] - before["listMerchantsCalls"]})
            print(json.dumps(results[-1]), flush=True)
            for proc, _, _ in edges:
                fleet.stop(proc)
        for proc, _ in relays:
            fleet.stop(proc)


def change_to_found(fleet, results):
    for source in ("core", "nats"):
        relays = [fleet.start_relay(n) for n in range(2)] if source == "nats" else []
        edges = [fleet.start_edge(n, source) for n in range(3)]
        fleet.wait_edges(edges, source)
        runs = []
        for n, (_, grpc, admin) in enumerate(edges):
            report = os.path.join(fleet.tmp, f"loadgen-{source}-{n}.json")
            argv = [fleet.args.loadgen, "run", "--target", grpc, "--duration", f"{fleet.args.seconds}s",
                    "--rate", str(fleet.args.rate), "--merchants", str(fleet.args.merchants),
                    "--churn-core", f"http://{fleet.core}", "--churn-admin", admin,
                    "--churn-rate", str(fleet.args.churn_rate), "--json", report]
            runs.append((fleet.spawn(argv, f"loadgen-{source}-{n}"), report))
        per_edge = []
        for proc, report in runs:
            proc.wait(fleet.args.seconds + 60)
            fleet.procs.remove(proc)
            with open(report) as f:
                data = json.load(f)
            churn = data["churn"]
            per_edge.append({"onboarded": churn["onboarded"], "stale": churn["stale"],
                             "failures": churn["failures"],
                             "p50_ms": churn["foundAfter"]["p50"] / 1e6, "p99_ms": churn["foundAfter"]["p99"] / 1e6,
                             "rps": data.get("rps"), "lookup_p99_ms": latency(data, 99)})
        results.append({"part": "change to FOUND", "source": source, "edges": per_edge,
                        "onboarded": sum(e["onboarded"] for e in per_edge),
                        "worst_p50_ms": max(e["p50_ms"] for e in per_edge),
                        "worst_p99_ms": max(e["p99_ms"] for e in per_edge)})
        print(json.dumps(results[-1]), flush=True)
        for proc, _, _ in edges:
            fleet.stop(proc)
        for proc, _ in relays:
            fleet.stop(proc)


def latency(report, percentile):
    for entry in report.get("latencyDistribution") or []:
        if entry.get("percentage") == percentile:
            return entry["latency"] / 1e6
    return None


def applied(admin):
    return metric(http(admin, "/metrics", 0.5)[1], "merchant_edge_feed_applied_sequence") or 0


def next_notice_everywhere(edges, since, limit=10.0):
    """Seconds from `since` until every edge has applied a notice past what it held at `since`."""
    start = {admin: applied(admin) for _, _, admin in edges}
    pending = set(start)
    deadline = since + limit
    while pending and time.monotonic() < deadline:
        for admin in list(pending):
            if applied(admin) > start[admin]:
                pending.discard(admin)
        time.sleep(0.002)
    return None if pending else time.monotonic() - since


def failover(fleet, results, kills=3):
    relays = [fleet.start_relay(n) for n in range(2)]
    edges = [fleet.start_edge(n, "nats") for n in range(3)]
    fleet.wait_edges(edges, "nats")
    _, grpc, admin = edges[0]
    duration = 8 + 4 * kills
    churn = fleet.spawn([fleet.args.loadgen, "run", "--target", grpc, "--duration", f"{duration}s", "--rate", "200",
                         "--merchants", str(fleet.args.merchants), "--churn-core", f"http://{fleet.core}",
                         "--churn-admin", admin, "--churn-rate", "50"], "loadgen-failover")
    time.sleep(3)
    baseline, after_kill = [], []
    for attempt in range(kills):
        baseline.append(next_notice_everywhere(edges, time.monotonic()))
        time.sleep(0.5)
        published = [metric(http(a, "/metrics")[1], "merchant_edge_relay_publishes_total") or 0 for _, a in relays]
        time.sleep(1)
        published = [(metric(http(a, "/metrics")[1], "merchant_edge_relay_publishes_total") or 0) - p
                     for (_, a), p in zip(relays, published)]
        victim = published.index(max(published))
        killed_at = time.monotonic()
        relays[victim][0].send_signal(signal.SIGKILL)
        after_kill.append(next_notice_everywhere(edges, killed_at))
        fleet.stop(relays[victim][0])
        relays[victim] = fleet.start_relay(10 + attempt)
        time.sleep(0.5)
    churn.wait(duration + 30)
    fleet.procs.remove(churn)
    ms = lambda xs: [round(x * 1000, 1) if x is not None else None for x in xs]
    results.append({"part": "relay failover", "churn_per_second": 50, "kill_to_next_notice_on_all_ms": ms(after_kill),
                    "no_kill_to_next_notice_on_all_ms": ms(baseline)})
    print(json.dumps(results[-1]), flush=True)
    for proc, _, _ in edges:
        fleet.stop(proc)
    for proc, _ in relays:
        fleet.stop(proc)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/merchant-edge"))
    parser.add_argument("--loadgen", default=os.path.join(ROOT, "target/release/merchant-loadgen"))
    parser.add_argument("--seconds", type=int, default=20, help="length of each change-to-FOUND run")
    parser.add_argument("--rate", type=int, default=2000, help="lookups per second per edge during it")
    parser.add_argument("--churn-rate", type=float, default=20, help="onboardings per second per edge")
    parser.add_argument("--merchants", type=int, default=100000)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    fleet = Fleet(args)
    results = []
    try:
        fleet.start_base()
        core_load(fleet, results)
        change_to_found(fleet, results)
        failover(fleet, results)
    finally:
        fleet.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(f"logs in {fleet.tmp}", file=sys.stderr)


if __name__ == "__main__":
    main()
