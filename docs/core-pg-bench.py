#!/usr/bin/env python3
"""core-pg figures against the simulator, side by side in one run (release binaries).

    cargo build --release -p merchant-edge -p merchant-loadgen
    python3 docs/core-pg-bench.py [--merchants 1000000] [--rate 20000] [--seconds 10]

Starts a PostgreSQL cluster (initdb in a temporary directory, run as the `postgres` user when root,
wal_level=logical, deploy/postgres/schema.sql, the same merchants the simulator computes), core-pg
over it and a core-sim, all on loopback, and prints for each core:

1. warm start: an edge starting with feed.warm_start until /readyz is 200 (ListMerchants of every
   merchant), and the CPU seconds the core side spent meanwhile (core-pg + every postgres process, or
   core-sim);
2. change -> FOUND under load: `merchant-loadgen run --rate R --churn-rate 20` against a warm edge:
   from UpsertMerchant returning (for core-pg: the COMMIT) to the edge answering FOUND, p50/p99;
3. GetMerchant as the edge sees it: a cold edge (no warm start) under a uniform load over every
   merchant, so most lookups miss and call GetMerchant; p50/p99 of the edge's core-call histogram
   (merchant_edge_core_call_duration_seconds, interpolated within its buckets);
4. core-pg only: notices per second its decoder sustains, from the COMMIT of N single-row changes
   in one transaction and of N changes in transactions of 100 rows, to head_sequence reaching them.

Everything is bounded in time; every process it starts is stopped when it ends.
"""
import argparse
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchkit import free_port, http, wait  # noqa: E402


def metric(addr, name):
    """Sum of every sample of `name` (any labels) on /metrics."""
    _, text = http(addr, "/metrics")
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


def histogram_quantile(addr, name, q):
    """Prometheus-style quantile of a cumulative histogram (linear within the bucket)."""
    _, text = http(addr, "/metrics")
    buckets = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-9)
        lower, below = bound, buckets[bound]
    return lower


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / tick


def postgres_pids(data_dir):
    pids = []
    for proc in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{proc}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"{proc}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm == "postgres" or cmdline.startswith(b"postgres:"):
            pids.append(int(proc.rsplit("/", 1)[1]))
    return pids


class Cluster:
    def __init__(self, scratch):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
        if not bins:
            raise SystemExit("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.bin = bins[-1]
        self.dir = os.path.join(scratch, "pg")
        os.makedirs(self.dir)
        self.owner = None
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            self.owner = (user.pw_uid, user.pw_gid)
            os.chown(self.dir, *self.owner)
        self.port = free_port()
        self.run("initdb", "--auth=trust", "--username=postgres", "--no-sync", "--locale=C", "-D", self.data)
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c wal_level=logical "
                   "-c shared_buffers=256MB -c max_wal_size=4GB")
        self.run("pg_ctl", "-w", "-l", os.path.join(self.dir, "log"), "-o", options, "-D", self.data, "start")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self):
        return os.path.join(self.dir, "data")

    def demote(self):
        if self.owner:
            os.setgid(self.owner[1])
            os.setuid(self.owner[0])

    def run(self, tool, *args):
        subprocess.run([os.path.join(self.bin, tool), *args], check=True, cwd=self.dir,
                       preexec_fn=self.demote, stdout=subprocess.DEVNULL)

    def sql(self, statement):
        subprocess.run([os.path.join(self.bin, "psql"), self.url, "-q", "-v", "ON_ERROR_STOP=1", "-c", statement],
                       check=True, stdout=subprocess.DEVNULL)

    def sql_file(self, path):
        subprocess.run([os.path.join(self.bin, "psql"), self.url, "-q", "-v", "ON_ERROR_STOP=1", "-f", path],
                       check=True, stdout=subprocess.DEVNULL)

    def stop(self):
        subprocess.run([os.path.join(self.bin, "pg_ctl"), "-w", "-m", "immediate", "-D", self.data, "stop"],
                       cwd=self.dir, preexec_fn=self.demote, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--merchants", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=20_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--notices", type=int, default=100_000)
    parser.add_argument("--bin", default=os.path.join(ROOT, "target/release/merchant-edge"))
    parser.add_argument("--loadgen", default=os.path.join(ROOT, "target/release/merchant-loadgen"))
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="core-pg-bench-")
    os.chmod(scratch, 0o755)
    processes = []

    def start(*command, **kwargs):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kwargs)
        processes.append(process)
        return process

    cluster = Cluster(scratch)
    try:
        cluster.sql_file(os.path.join(ROOT, "deploy/postgres/schema.sql"))
        loading = time.monotonic()
        # The simulator's merchants (ID 898 + 12 digits of the index); every 100th not ACTIVE, as there.
        cluster.sql(
            "INSERT INTO merchants (merchant_id, name, mcc, city, status) "
            "SELECT '898' || lpad(n::text, 12, '0'), 'Merchant ' || n, '5411', 'City ' || (n % 500), "
            "CASE WHEN n % 100 = 97 THEN 'SUSPENDED' ELSE 'ACTIVE' END "
            f"FROM generate_series(0, {args.merchants - 1}) AS n")
        cluster.sql("VACUUM ANALYZE merchants")
        print(f"loaded {args.merchants} rows into PostgreSQL in {time.monotonic() - loading:.1f} s")

        pg_grpc, pg_admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        core_pg = start(args.bin, "core-pg", "--database-url", cluster.url, "--listen", pg_grpc, "--admin", pg_admin)
        wait("core-pg is ready", lambda: http(pg_admin, "/readyz")[0] == 200)
        sim_grpc = f"127.0.0.1:{free_port()}"
        sim = start(args.bin, "core-sim", "--listen", sim_grpc, "--merchants", str(args.merchants))
        wait("core-sim listens", lambda: socket.socket().connect_ex(tuple([sim_grpc.split(":")[0], int(sim_grpc.split(":")[1])])) == 0)

        cores = {
            "core-pg": (pg_grpc, lambda: [core_pg.pid] + postgres_pids(cluster.data)),
            "core-sim": (sim_grpc, lambda: [sim.pid]),
        }
        results = {}

        def edge(name, core, warm, extra=""):
            grpc, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            config = os.path.join(scratch, f"{name}.toml")
            with open(config, "w") as f:
                f.write(f'[server]\nlisten = "{grpc}"\n[admin]\nlisten = "{admin}"\n'
                        f'[upstream]\nendpoint = "http://{core}"\n[feed]\nwarm_start = {str(warm).lower()}\n'
                        f'[reload]\nwatch_file = false\n{extra}')
            process = start(args.bin, "serve", "--config", config)
            return process, grpc, admin

        for name, (core, pids) in cores.items():
            figures = results.setdefault(name, {})
            cpu_before = cpu_seconds(pids())
            started = time.monotonic()
            process, grpc, admin = edge(f"warm-{name}", core, True)
            wait("the warm edge is ready", lambda: http(admin, "/readyz")[0] == 200, pause=0.005)
            figures["warm start s"] = time.monotonic() - started
            figures["warm start core CPU s"] = cpu_seconds(pids()) - cpu_before

            report = os.path.join(scratch, f"churn-{name}.json")
            subprocess.run([args.loadgen, "run", "--target", grpc, "--duration", f"{args.seconds}s",
                            "--rate", str(args.rate), "--merchants", str(args.merchants),
                            "--churn-core", f"http://{core}", "--churn-admin", admin, "--churn-rate", "20",
                            "--json", report], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(report) as f:
                churn = json.load(f)["churn"]
            figures["change->FOUND p50 ms"] = churn["foundAfter"]["p50"] / 1e6
            figures["change->FOUND p99 ms"] = churn["foundAfter"]["p99"] / 1e6
            figures["change->FOUND n / stale"] = f'{churn["foundAfter"]["count"]} / {churn["stale"]}'
            process.terminate()
            process.wait(timeout=30)

            process, grpc, admin = edge(f"cold-{name}", core, False)
            wait("the cold edge is ready", lambda: http(admin, "/readyz")[0] == 200)
            subprocess.run([args.loadgen, "run", "--target", grpc, "--duration", f"{args.seconds}s",
                            "--rate", str(args.rate // 4), "--merchants", str(args.merchants), "--keys", "uniform"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            series = "merchant_edge_core_call_duration_seconds"
            figures["GetMerchant calls"] = int(metric(admin, series + "_count") or 0)
            figures["GetMerchant p50 ms"] = (histogram_quantile(admin, series, 0.5) or 0) * 1e3
            figures["GetMerchant p99 ms"] = (histogram_quantile(admin, series, 0.99) or 0) * 1e3
            process.terminate()
            process.wait(timeout=30)

        figures = results["core-pg"]
        # The decoder's throughput: N changes committed, until core-pg's head reaches them.
        head = metric(pg_admin, "merchant_edge_core_pg_head_sequence")
        cluster.sql("UPDATE merchants SET name = name || '.' "
                    f"WHERE merchant_id < '898' || lpad('{args.notices}', 12, '0')")
        committed = time.monotonic()
        wait("core-pg decoded the transaction",
             lambda: metric(pg_admin, "merchant_edge_core_pg_head_sequence") >= head + args.notices, pause=0.002)
        figures[f"decoder notices/s (1 txn of {args.notices}, COMMIT to decoded)"] = \
            int(args.notices / (time.monotonic() - committed))
        head = metric(pg_admin, "merchant_edge_core_pg_head_sequence")
        script = os.path.join(scratch, "batches.sql")
        with open(script, "w") as f:
            for first in range(0, args.notices, 100):
                f.write(f"UPDATE merchants SET name = name || ',' WHERE merchant_id >= '898{first:012d}' "
                        f"AND merchant_id < '898{first + 100:012d}';\n")
        writing = time.monotonic()
        cluster.sql_file(script)
        wait("core-pg decoded the transactions",
             lambda: metric(pg_admin, "merchant_edge_core_pg_head_sequence") >= head + args.notices, pause=0.002)
        figures[f"decoder notices/s ({args.notices // 100} txns of 100, first write to decoded)"] = \
            int(args.notices / (time.monotonic() - writing))

        print(f"\n{args.merchants} merchants; load {args.rate}/s for {args.seconds} s; release binaries; one run")
        names = list(results)
        keys = list(dict.fromkeys(k for r in results.values() for k in r))
        print(f"{'':45}" + "".join(f"{n:>16}" for n in names) + f"{'ratio pg/sim':>14}")
        for key in keys:
            values = [results[n].get(key, "") for n in names]
            cells = "".join(f"{v:>16.2f}" if isinstance(v, float) else f"{str(v):>16}" for v in values)
            ratio = ""
            if all(isinstance(v, float) for v in values) and values[1]:
                ratio = f"{values[0] / values[1]:>14.2f}"
            print(f"{key:45}{cells}{ratio}")
    finally:
        for process in processes:
            process.kill()
            process.wait()
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
