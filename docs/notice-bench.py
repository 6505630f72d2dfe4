#!/usr/bin/env python3
"""Change at the core -> FOUND at the edge under lookup load, on both serving runtimes side by side.

    cargo build --release -p merchant-edge -p merchant-loadgen
    python3 docs/notice-bench.py [--seconds 12] [--rate 20000] [--churn-rate 100] [--rounds 2]

Per round and runtime (`server.runtime = "per-core"`, then `"shared"`): a core simulator and one edge
on loopback, and the command docs/performance.md gives (`merchant-loadgen run --rate R --churn-rate C`):
each onboarding's ID is first cached as not found, then UpsertMerchant returns at the core, and the
edge is polled until it answers FOUND. Prints p50/p99/max of that time, the lookups served and their
p99, per runtime, rounds interleaved so that both see the same machine.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import free_port, http, wait  # noqa: E402


def one_run(args, runtime, tmp, n):
    core, grpc, admin = (f"127.0.0.1:{free_port()}" for _ in range(3))
    config = os.path.join(tmp, f"edge-{runtime}-{n}.toml")
    with open(config, "w") as f:
        f.write(f'[server]\nlisten = "{grpc}"\nruntime = "{runtime}"\n[admin]\nlisten = "{admin}"\n'
                f'[upstream]\nendpoint = "http://{core}"\n[reload]\nwatch_file = false\n[log]\nlevel = "warn"\n')
    procs = []
    try:
        log = open(os.path.join(tmp, f"core-{runtime}-{n}.log"), "w")
        procs.append(subprocess.Popen([args.bin, "core-sim", "--listen", core, "--merchants", str(args.merchants)],
                                      stdout=log, stderr=subprocess.STDOUT))
        log = open(os.path.join(tmp, f"edge-{runtime}-{n}.log"), "w")
        procs.append(subprocess.Popen([args.bin, "serve", "--config", config], stdout=log, stderr=subprocess.STDOUT))
        wait("the edge is ready", lambda: http(admin, "/readyz")[0] == 200)
        report = os.path.join(tmp, f"loadgen-{runtime}-{n}.json")
        subprocess.run([args.loadgen, "run", "--target", grpc, "--duration", f"{args.seconds}s",
                        "--rate", str(args.rate), "--merchants", str(args.merchants),
                        "--churn-core", f"http://{core}", "--churn-admin", admin,
                        "--churn-rate", str(args.churn_rate), "--json", report],
                       check=True, stdout=subprocess.DEVNULL, timeout=args.seconds + 120)
        with open(report) as f:
            data = json.load(f)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
    churn = data["churn"]
    found = churn["foundAfter"]
    lookup_p99 = next((e["latency"] / 1e6 for e in data.get("latencyDistribution") or []
                       if e.get("percentage") == 99), None)
    return {"runtime": runtime, "round": n, "onboarded": churn["onboarded"], "stale": churn["stale"],
            "failures": churn["failures"], "found_p50_ms": found["p50"] / 1e6, "found_p99_ms": found["p99"] / 1e6,
            "found_max_ms": found["slowest"] / 1e6, "rps": data.get("rps"), "lookup_p99_ms": lookup_p99}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/merchant-edge"))
    parser.add_argument("--loadgen", default=os.path.join(ROOT, "target/release/merchant-loadgen"))
    parser.add_argument("--seconds", type=int, default=12)
    parser.add_argument("--rate", type=int, default=20000)
    parser.add_argument("--churn-rate", type=float, default=100)
    parser.add_argument("--merchants", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtimes", default="per-core,shared")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="notice-bench-")
    for n in range(args.rounds):
        for runtime in args.runtimes.split(","):
            print(json.dumps(one_run(args, runtime, tmp, n)), flush=True)
    print(f"logs in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    main()
