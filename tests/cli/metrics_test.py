"""Prometheus metrics, scraped by a real Prometheus server.

A cluster on loopback (a store and a worker with --metrics-listen, a router
whose HTTP API serves /metrics) and a `prometheus` server (the Debian
package) that scrapes all three every second. After known traffic through
the OpenAI API, the test reads the values back through Prometheus's HTTP
query API and checks them against what the traffic and the components
report: requests, tokens, finish reasons and patterns from the responses'
usage and route; cache bytes, loads and resident patterns from `premoe
worker status`; patterns and watch streams from the store.

usage: metrics_test.py --premoe PATH [--prometheus PATH]
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import openai

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testutil"))
from serve_procs import Processes  # noqa: E402

MODEL = "testbed/model"
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_port(log):
    m = re.search(r"metrics on http://[^:]+:(\d+)/metrics", log)
    if not m:
        raise RuntimeError(f"no metrics port in:\n{log}")
    return int(m.group(1))


class Prometheus:
    def __init__(self, binary, tmp, targets):
        self.port = free_port()
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n")
            for job, address in targets.items():
                f.write(f"  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n")
        self.log = os.path.join(tmp, "prometheus.log")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp}/tsdb",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())["data"]

    def wait_targets_up(self, n, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                active = self.api("targets")["activeTargets"]
                if len(active) == n and all(t["health"] == "up" for t in active):
                    return active
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"targets not up: {self.api('targets')}\n{open(self.log).read()[-3000:]}")

    def value(self, query):
        """The instant query's single value, or None."""
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def wait_value(self, query, want, timeout=20):
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.value(query)
            if got is not None and abs(got - want) < 1e-6:
                return got
            time.sleep(0.5)
        return got

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


def scenario(cluster, prometheus_binary):
    tmp = cluster.tmp
    store_port = cluster.serve("store", "--role", "store", "--store-dir", f"{tmp}/store",
                               "--metrics-listen", "127.0.0.1:0")
    for task in ("add", "reverse"):
        cluster.run("profile", "--model", MODEL, "--task", task, "--testbed-task", task, "--samples", "8",
                    "--store", f"127.0.0.1:{store_port}")
    worker_port = cluster.serve("worker", "--role", "worker", "--model", MODEL, "--dtype", "fp32",
                                "--cache", "8MiB", "--metrics-listen", "127.0.0.1:0")
    _, http_port = cluster.serve("router", "--role", "router", "--model", MODEL,
                                 "--store", f"127.0.0.1:{store_port}",
                                 "--workers", f"127.0.0.1:{worker_port}", "--budget", "50%", http=True)
    prom = Prometheus(prometheus_binary, tmp, {
        "router": f"127.0.0.1:{http_port}",
        "worker": f"127.0.0.1:{metrics_port(cluster.log('worker'))}",
        "store": f"127.0.0.1:{metrics_port(cluster.log('store'))}"})
    try:
        prom.wait_targets_up(3)
        check(True, "Prometheus scrapes router, worker and store (all targets up)")

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="none", max_retries=0)
        prompts = ["What is 12 + 30?", "Reverse: banana", "What is 7 + 8?", "Reverse: orange"]
        replies = [client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0)
                   for p in prompts]
        replies.append(client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=1,
                                                 temperature=0, extra_body={"ignore_eos": True}))
        try:  # a request the router refuses: counted as a failure, not a success
            client.completions.create(model=MODEL, prompt="x", extra_body={"task": "juggling"})
        except openai.NotFoundError:
            pass
        prompt_tokens = sum(r.usage.prompt_tokens for r in replies)
        generated = sum(r.usage.completion_tokens for r in replies)
        by_pattern = {}
        for r in replies:
            key = (r.model_extra["premoe"]["task"], r.model_extra["premoe"]["decision"])
            by_pattern[key] = by_pattern.get(key, 0) + 1
        lengths = sum(1 for r in replies if r.choices[0].finish_reason == "length")

        q = 'sum(premoe:request_success_total{job="router"})'
        check(prom.wait_value(q, len(replies)) == len(replies), f"{q} = {prom.value(q)}, want {len(replies)}")
        q = 'premoe:request_success_total{job="router",finished_reason="length"}'
        check(prom.wait_value(q, lengths) == lengths, f"{q} = {prom.value(q)}, want {lengths}")
        q = 'premoe:prompt_tokens_total{job="router"}'
        check(prom.wait_value(q, prompt_tokens) == prompt_tokens, f"{q} = {prom.value(q)}, want {prompt_tokens}")
        q = 'premoe:generation_tokens_total{job="router"}'
        check(prom.wait_value(q, generated) == generated, f"{q} = {prom.value(q)}, want {generated}")
        for (task, decision), n in by_pattern.items():
            q = f'premoe:pattern_requests_total{{job="router",task="{task}",decision="{decision}"}}'
            check(prom.wait_value(q, n) == n, f"{q} = {prom.value(q)}, want {n}")
        q = 'premoe:request_failure_total{job="router",code="NOT_FOUND"}'
        check(prom.wait_value(q, 1) == 1, f"{q} = {prom.value(q)}, want 1")
        for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds",
                     "request_queue_time_seconds"):
            q = f'premoe:{name}_count{{job="router"}}'
            check(prom.wait_value(q, len(replies)) == len(replies), f"{q} = {prom.value(q)}, want {len(replies)}")
        matched = sum(n for (t, d), n in by_pattern.items() if d in ("match", "fallback"))
        q = 'premoe:match_seconds_count{job="router"}'
        check(prom.wait_value(q, matched) == matched, f"{q} = {prom.value(q)}, want {matched}")
        q = 'premoe:num_requests_running{job="router"} + premoe:num_requests_waiting{job="router"}'
        check(prom.wait_value(q, 0) == 0, f"{q} = {prom.value(q)} once idle")

        # The worker's cache, as `premoe worker status` reports it.
        status = json.loads(cluster.run("worker", "status", "--address", f"127.0.0.1:{worker_port}", "--json"))
        for query, want in (
                ('premoe:expert_cache_budget_bytes{job="worker"}', status["budget_bytes"]),
                ('premoe:expert_cache_bytes{job="worker",state="resident"}', status["resident_bytes"]),
                ('premoe:expert_cache_bytes{job="worker",state="free"}',
                 status["budget_bytes"] - status["resident_bytes"]),
                ('premoe:expert_loads_total{job="worker"}', status["loads"]),
                ('premoe:expert_load_bytes_total{job="worker"}', status["loaded_bytes"]),
                ('premoe:expert_evictions_total{job="worker"}', status["evictions"]),
                ('premoe:resident_patterns{job="worker"}', sum(1 for p in status["patterns"] if p["resident"]))):
            check(prom.wait_value(query, want) == want, f"{query} = {prom.value(query)}, want {want}")
        check(status["loads"] > 0, f"the traffic loaded experts ({status['loads']})")
        q = 'premoe:expert_load_seconds_count{job="worker"}'
        check((prom.value(q) or 0) >= 1, f"{q} = {prom.value(q)} (a load was timed)")

        # The store: two patterns, the router's replica watching.
        q = 'premoe:store_patterns{job="store"}'
        check(prom.wait_value(q, 2) == 2, f"{q} = {prom.value(q)}, want 2")
        q = 'premoe:store_watch_streams{job="store"}'
        check(prom.wait_value(q, 1) == 1, f"{q} = {prom.value(q)}, want 1")
    finally:
        prom.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--premoe", required=True)
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Processes(os.path.abspath(args.premoe), tmp)
        try:
            scenario(cluster, args.prometheus)
        except Exception:
            cluster.print_logs("store", "worker", "router", "prometheus")
            raise
        finally:
            cluster.stop()
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
