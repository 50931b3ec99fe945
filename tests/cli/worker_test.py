"""`premoe worker` end to end: a real worker process on loopback.

Profiles the testbed tasks `add` and `reverse` into pattern files, starts
`premoe worker serve` on the committed testbed model with an expert cache
smaller than the model's experts, and checks:
- the standard gRPC health service answers SERVING;
- `worker prepare` makes each pattern resident (32 of 64 experts at 50%);
- every completion streamed by `worker generate`, run concurrently so that
  requests of both patterns share batches, is exactly what `premoe generate`
  prints for the same prompt with a reduced model of that pattern's experts
  (`premoe select --mask-out`, a separate code path through the resident
  engine), with and without a stop string;
- `worker status --json` reports the patterns and memory within the budget;
- an unknown task exits 1 naming it; SIGTERM ends the server cleanly.

usage: worker_test.py --premoe PATH
"""
import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.normpath(os.path.join(HERE, "..", "..", "testbed", "model"))
TASKS = ["add", "reverse"]
NEW_TOKENS = 12

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL {what}", flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def must(cmd):
    r = run(cmd)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--premoe", required=True)
    premoe = ap.parse_args().premoe
    with tempfile.TemporaryDirectory() as tmp:
        prompts = {}
        for task in TASKS:
            must([premoe, "profile", "--model", MODEL, "--task", task, "--testbed-task", task,
                  "--samples", "20", "--out", f"{tmp}/{task}.pb"])
            must([premoe, "select", "--pattern", f"{tmp}/{task}.pb", "--budget", "50%",
                  "--model", MODEL, "--mask-out", f"{tmp}/{task}.mask.json"])
            lines = must([premoe, "tasks", "export", task, "--split", "eval", "--n", "3"])
            prompts[task] = [json.loads(l)["prompt"] for l in lines.splitlines()]

        port_file = f"{tmp}/port"
        server = subprocess.Popen(
            [premoe, "worker", "serve", "--model", MODEL, "--dtype", "fp32", "--cache", "8MiB",
             "--max-batch", "3", "--port-file", port_file],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(600):
                if os.path.exists(port_file) or server.poll() is not None:
                    break
                time.sleep(0.1)
            if not os.path.exists(port_file):
                sys.exit(f"the worker did not start: {server.communicate()[1]}")
            address = f"127.0.0.1:{open(port_file).read().strip()}"

            with grpc.insecure_channel(address) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10)
                check(health.status == health_pb2.HealthCheckResponse.SERVING,
                      f"health: {health.status}")

            for task in TASKS:
                out = must([premoe, "worker", "prepare", "--address", address, "--pattern",
                            f"{tmp}/{task}.pb", "--budget", "50%"])
                check(f"pattern {task} at 50%: 32 experts" in out, f"prepare {task}: {out}")

            cases = [(task, p, stop) for task in TASKS for p in prompts[task] for stop in ([], ["1"])]

            def reference(case):
                task, prompt, stop = case
                cmd = [premoe, "generate", "--model", MODEL, "--dtype", "fp32", "--keep",
                       f"{tmp}/{task}.mask.json", "--prompt", prompt,
                       "--max-new-tokens", str(NEW_TOKENS)]
                return must(cmd + (["--stop", *stop] if stop else []))

            def remote(case):
                task, prompt, stop = case
                cmd = [premoe, "worker", "generate", "--address", address, "--task", task,
                       "--prompt", prompt, "--max-new-tokens", str(NEW_TOKENS)]
                r = run(cmd + (["--stop", *stop] if stop else []))
                return r.returncode, r.stdout, r.stderr

            with concurrent.futures.ThreadPoolExecutor(max_workers=len(cases)) as pool:
                got = list(pool.map(remote, cases))
            for case, (code, out, err) in zip(cases, got):
                want = reference(case)
                check(code == 0 and out == want,
                      f"{case}: worker printed {out!r} (exit {code}, {err.strip()!r}), "
                      f"premoe generate {want!r}")
                if code == 0:
                    reason = "stop" if case[2] and want != reference((case[0], case[1], [])) else None
                    if reason:
                        check("[stop:" in err, f"{case}: finish reason in {err!r}")

            status = json.loads(must([premoe, "worker", "status", "--address", address, "--json"]))
            check(sorted(p["task"] for p in status["patterns"]) == TASKS,
                  f"status patterns: {status['patterns']}")
            check(status["resident_bytes"] <= status["budget_bytes"] == 8 << 20,
                  f"status memory: {status}")
            check(status["running"] == 0 and status["queued"] == 0 and
                  status["pinned_experts"] == 0, f"status idle: {status}")

            r = run([premoe, "worker", "generate", "--address", address, "--task", "nope",
                     "--prompt", "hi"])
            check(r.returncode == 1 and "NOT_FOUND" in r.stderr and '"nope"' in r.stderr,
                  f"unknown task: exit {r.returncode}, {r.stderr!r}")
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(timeout=30)
                check(code == 0, f"worker exit code {code} after SIGTERM")
            except subprocess.TimeoutExpired:
                server.kill()
                check(False, "worker did not stop after SIGTERM")
    if failures:
        sys.exit(f"{len(failures)} failures")
    print("ok")


if __name__ == "__main__":
    main()
