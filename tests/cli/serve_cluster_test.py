"""`premoe serve` as a cluster, end to end: real processes on loopback.

Starts a store, profiles the testbed tasks add, reverse, caesar and sort into
it over gRPC, then starts two workers (fp32) and a router pointed at the store
and both workers, and checks:
- every server answers the standard gRPC health check (service "") SERVING;
- `premoe query` of eval prompts of every task through the router is matched
  to its task, lands on one of the two workers, and that worker's
  `worker status` then lists the pattern "TASK@50%" as resident;
- each answer is exactly what the one-process mode (`premoe serve` on a store
  directory profiled the same way) gives for the same prompt, with the same
  task; that server stops with exit 0 on SIGTERM;
- after the busier worker is killed with SIGKILL, queries of every task still
  succeed, land on the survivor, which then holds their patterns, and give the
  same answers; the first ones go out from this process over a connected
  channel within milliseconds of the kill, before the router's 500 ms health
  poll notices, so the router has to retry on the other worker; the router is
  still SERVING;
- after the last worker is stopped with SIGSTOP (it holds its connections
  but answers nothing), a query sent at once fails within STALL_FAILURE
  seconds (keepalive gives up on the connection) instead of hanging until its
  deadline;
- after the last worker is killed with SIGKILL, a query fails quickly (exit 1,
  UNAVAILABLE), both before and after the router's health poll notices,
  and never hangs;
- SIGTERM stops the router and the store with exit 0.
The cluster runs mutual TLS (certificates made here with openssl; every
server requires a client certificate of the same CA) and asks for API keys
(--api-key-file, --admin-key-file): its own calls carry them (--key-file), a
call without a key is UNAUTHENTICATED, an API key on Put (profile)
PERMISSION_DENIED, a plaintext client cannot connect; health checks need no
key. The one-process server runs plaintext without keys.

usage: serve_cluster_test.py [--premoe PATH]  (default: $PREMOE_BINARY_DIR/cli/premoe)
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("PREMOE_SOURCE_DIR", os.path.normpath(os.path.join(HERE, "..", "..")))
MODEL = os.path.join(SOURCE_DIR, "testbed", "model")
TASKS = ["add", "reverse", "caesar", "sort"]
SAMPLES = 16
PROMPTS_PER_TASK = 2
NEW_TOKENS = 16
BUDGET = "50%"
START_TIMEOUT = 60  # the router waits up to 30 s for its store replica
STOP_TIMEOUT = 30
QUERY_TIMEOUT = 30  # a query that takes this long hangs
QUICK_FAILURE = 10  # a query without workers fails in less
STALL_FAILURE = 25  # a query to a stopped worker fails in less (keepalive: 10 s + 5 s)
API_KEY = "test-api-key-0123456789abcdef"
ADMIN_KEY = "test-admin-key-0123456789abcdef"

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL {what}", flush=True)
    return cond


def make_channel(address, certs):
    """A channel to `address`: mutual TLS with `certs` when given."""
    if not certs:
        return grpc.insecure_channel(address)
    read = lambda name: open(certs[name], "rb").read()
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(
        read("ca.pem"), read("node.key"), read("node.pem")))


def make_certs(tmp):
    """A CA and a certificate for 127.0.0.1 it signed (server and client)."""
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], cwd=tmp, check=True, capture_output=True)
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=premoe-test-ca")
    with open(os.path.join(tmp, "san"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("req", *key, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=node")
    run("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "node.pem", "-days", "2", "-extfile", "san")
    return {name: os.path.join(tmp, name) for name in ("ca.pem", "node.pem", "node.key")}


class Premoe:
    def __init__(self, binary):
        self.binary = binary
        self.key_file = None  # sent as --key-file when set
        self.certs = None  # mutual TLS for servers and clients when set

    def global_args(self, key_file=None):
        """key_file None: self.key_file; "": no key."""
        key_file = self.key_file if key_file is None else key_file
        args = ["--key-file", key_file] if key_file else []
        if self.certs:
            args += ["--tls-cert", self.certs["node.pem"], "--tls-key", self.certs["node.key"],
                     "--tls-ca", self.certs["ca.pem"], "--tls-client-ca", self.certs["ca.pem"]]
        return args


    def run(self, *args, timeout=300, key_file=None):
        return subprocess.run([self.binary, *self.global_args(key_file), *args],
                              capture_output=True, text=True, timeout=timeout)

    def ok(self, *args):
        r = self.run(*args)
        if r.returncode != 0:
            raise RuntimeError(f"premoe {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r.stdout

    def query(self, address, prompt, key_file=None):
        """(exit code, parsed JSON or None, stderr, seconds)."""
        start = time.monotonic()
        r = self.run("query", "--address", address, "--prompt", prompt,
                     "--max-new-tokens", str(NEW_TOKENS), "--json", timeout=QUERY_TIMEOUT,
                     key_file=key_file)
        seconds = time.monotonic() - start
        answer = json.loads(r.stdout) if r.returncode == 0 else None
        return r.returncode, answer, r.stderr, seconds

    def resident_patterns(self, worker):
        status = json.loads(self.ok("worker", "status", "--address", worker, "--json"))
        return {p["task"] for p in status["patterns"] if p["resident"]}


class Server:
    """One `premoe serve` process; its stdout and stderr go to files in `tmp`."""

    servers = []

    def __init__(self, premoe, tmp, name, *args):
        self.name = name
        self.port_file = os.path.join(tmp, f"{name}.port")
        self.premoe = premoe
        self.certs = premoe.certs
        self.log = os.path.join(tmp, f"{name}.log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [premoe.binary, "--log-level", "warn", *premoe.global_args(),
                 "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                 "--port-file", self.port_file, *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        Server.servers.append(self)
        self.address = None

    def wait_serving(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if os.path.exists(self.port_file) and open(self.port_file).read().strip():
                self.address = f"127.0.0.1:{open(self.port_file).read().strip()}"
                return self.address
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode} before serving:\n"
                                   f"{self.output()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} wrote no port file in {START_TIMEOUT} s:\n{self.output()}")

    def channel(self):
        return make_channel(self.address, self.certs)

    def output(self):
        with open(self.log, errors="replace") as f:
            return f.read()[-4000:]

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def terminate(self):
        """SIGTERM; checks a clean exit within STOP_TIMEOUT."""
        self.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            check(False, f"{self.name} did not stop within {STOP_TIMEOUT} s of SIGTERM")
            return
        check(code == 0, f"{self.name} exit code {code} after SIGTERM "
                         f"({time.monotonic() - start:.1f} s):\n{self.output()}")


def serving(server):
    with server.channel() as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10)
        except grpc.RpcError as e:
            return f"{e.code()}: {e.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def inference_messages():
    """premoe.v1.InferenceRequest and InferenceResponse, with only the fields
    this test uses (numbers as in proto/premoe/v1/inference.proto and
    worker.proto; the parser skips the others)."""
    f = descriptor_pb2.FieldDescriptorProto
    fields = {
        "SamplingParams": [("max_new_tokens", 5, f.TYPE_INT64, None)],
        "InferenceRequest": [("prompt", 1, f.TYPE_STRING, None),
                             ("sampling", 3, f.TYPE_MESSAGE, ".premoe.v1.SamplingParams")],
        "Route": [("task", 1, f.TYPE_STRING, None), ("decision", 2, f.TYPE_STRING, None),
                  ("worker", 10, f.TYPE_STRING, None)],
        "InferenceResponse": [("text", 1, f.TYPE_STRING, None), ("done", 2, f.TYPE_BOOL, None),
                              ("route", 5, f.TYPE_MESSAGE, ".premoe.v1.Route")],
    }
    file = descriptor_pb2.FileDescriptorProto(name="serve_cluster_test/inference.proto",
                                              package="premoe.v1", syntax="proto3")
    for name, message_fields in fields.items():
        message = file.message_type.add(name=name)
        for field, number, kind, type_name in message_fields:
            message.field.add(name=field, number=number, type=kind, type_name=type_name,
                              label=f.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return [message_factory.GetMessageClass(pool.FindMessageTypeByName(f"premoe.v1.{name}"))
            for name in ("InferenceRequest", "InferenceResponse")]


class InferenceClient:
    """premoe.v1.Inference/Generate from this process: unlike `premoe query`, it
    sends within milliseconds of being asked, over a channel already connected."""

    def __init__(self, server, key):
        self.metadata = [("authorization", f"Bearer {key}")]
        self.request, response = inference_messages()
        self.channel = server.channel()
        grpc.channel_ready_future(self.channel).result(timeout=10)
        self.generate = self.channel.unary_stream(
            "/premoe.v1.Inference/Generate", request_serializer=self.request.SerializeToString,
            response_deserializer=response.FromString)

    def query(self, prompt):
        """{"text", "route": {"task", "decision", "worker"}} as `premoe query --json`."""
        request = self.request(prompt=prompt)
        request.sampling.max_new_tokens = NEW_TOKENS
        text, route = "", None
        for message in self.generate(request, timeout=QUERY_TIMEOUT, metadata=self.metadata):
            text += message.text
            if message.done:
                route = {"task": message.route.task, "decision": message.route.decision,
                         "worker": message.route.worker}
        if route is None:
            raise RuntimeError(f"the stream for {prompt!r} ended without a done message")
        return {"text": text, "route": route}

    def close(self):
        self.channel.close()


def describe(answer):
    route = answer["route"]
    return (f"{answer['text']!r} (task {route['task']}, {route['decision']}, "
            f"worker {route['worker']})")


def scenario(premoe, tmp):
    prompts = []  # (task, prompt)
    for task in TASKS:
        lines = premoe.ok("tasks", "export", task, "--split", "eval",
                          "--n", str(PROMPTS_PER_TASK)).splitlines()
        prompts += [(task, json.loads(line)["prompt"]) for line in lines]

    # The cluster: a store with the four patterns, two workers, a router, all
    # asking for keys. This process and the router hold the admin key.
    api_file, admin_file = f"{tmp}/api_keys", f"{tmp}/admin_keys"
    with open(api_file, "w") as f:
        f.write(f"# API keys\n{API_KEY}\n")
    with open(admin_file, "w") as f:
        f.write(f"{ADMIN_KEY}\n")
    keys = ["--api-key-file", api_file, "--admin-key-file", admin_file]
    premoe.key_file = admin_file
    premoe.certs = make_certs(tmp)
    store = Server(premoe, tmp, "store", "--role", "store", "--store-dir", f"{tmp}/cluster-store",
                   *keys)
    store.wait_serving()
    r = premoe.run("profile", "--model", MODEL, "--task", "add", "--testbed-task", "add",
                   "--samples", "2", "--store", store.address, key_file=api_file)
    check(r.returncode == 1 and "PERMISSION_DENIED" in r.stderr,
          f"profile into the store with an API key: exit {r.returncode}: {r.stderr.strip()!r}")
    for task in TASKS:
        premoe.ok("profile", "--model", MODEL, "--task", task, "--testbed-task", task,
                  "--samples", str(SAMPLES), "--store", store.address)
    workers = [Server(premoe, tmp, f"worker{i}", "--role", "worker", "--model", MODEL,
                      "--dtype", "fp32", *keys) for i in (1, 2)]
    addresses = [w.wait_serving() for w in workers]
    router = Server(premoe, tmp, "router", "--role", "router", "--model", MODEL,
                    "--store", store.address, "--workers", ",".join(addresses),
                    "--budget", BUDGET, *keys)
    router.wait_serving()
    for server in [store, *workers, router]:
        status = serving(server)
        check(status == "SERVING", f"{server.name} health: {status}")
    with grpc.insecure_channel(router.address) as plain:
        try:
            grpc.channel_ready_future(plain).result(timeout=3)
            check(False, "a plaintext client connected to the router, which serves TLS")
        except grpc.FutureTimeoutError:
            pass
    code, _, err, _ = premoe.query(router.address, "What is 1 + 2?", key_file="")
    check(code == 1 and "UNAUTHENTICATED" in err,
          f"a query without a key: exit {code}: {err.strip()!r}")
    r = premoe.run("worker", "status", "--address", addresses[0], key_file="")
    check(r.returncode == 1 and "UNAUTHENTICATED" in r.stderr,
          f"worker status without a key: exit {r.returncode}: {r.stderr.strip()!r}")

    def ask_cluster(when, allowed):
        """Queries every prompt through the router; the answers by prompt."""
        answers = {}
        for task, prompt in prompts:
            code, answer, err, seconds = premoe.query(router.address, prompt, key_file=api_file)
            if not check(code == 0, f"{when}: query {prompt!r} exit {code} "
                                    f"after {seconds:.1f} s: {err.strip()}"):
                continue
            answers[prompt] = answer
            route = answer["route"]
            check(route["task"] == task and route["decision"] == "match",
                  f"{when}: {prompt!r} ({task}) routed to task {route['task']!r} "
                  f"with decision {route['decision']!r}")
            check(route["worker"] in allowed,
                  f"{when}: {prompt!r} served by {route['worker']!r}, not one of {allowed}")
            if route["worker"] in addresses:
                resident = premoe.resident_patterns(route["worker"])
                check(f"{task}@{BUDGET}" in resident,
                      f"{when}: {prompt!r} served by {route['worker']}, which holds "
                      f"{sorted(resident)}, not {task}@{BUDGET}")
        return answers

    cluster = ask_cluster("cluster", addresses)
    served = {a: sum(1 for x in cluster.values() if x["route"]["worker"] == a)
              for a in addresses}
    print(f"cluster served {served}", flush=True)

    # The one-process mode on a store directory profiled the same way.
    for task in TASKS:
        premoe.ok("profile", "--model", MODEL, "--task", task, "--testbed-task", task,
                  "--samples", str(SAMPLES), "--store", f"{tmp}/single-store")
    cluster_certs, premoe.key_file, premoe.certs = premoe.certs, None, None
    single = Server(premoe, tmp, "single", "--model", MODEL, "--store-dir",
                    f"{tmp}/single-store", "--dtype", "fp32", "--budget", BUDGET)
    single.wait_serving()
    check(serving(single) == "SERVING", f"one-process health: {serving(single)}")
    # Its worker listens on a loopback port of its own (reported at start),
    # which takes only the key the process made: no one else may use it.
    internal = re.search(r"worker on (127\.0\.0\.1:\d+)", single.output())
    if check(internal is not None, f"one-process: no worker address reported:\n{single.output()}"):
        r = premoe.run("worker", "status", "--address", internal.group(1))
        check(r.returncode == 1 and "UNAUTHENTICATED" in r.stderr,
              f"one-process: its worker port answered a call without the key: exit "
              f"{r.returncode}: {r.stderr.strip()!r}")
    for task, prompt in prompts:
        code, answer, err, _ = premoe.query(single.address, prompt)
        if not check(code == 0, f"one-process: query {prompt!r} exit {code}: {err.strip()}"):
            continue
        if prompt in cluster:
            check(answer["text"] == cluster[prompt]["text"] and
                  answer["route"]["task"] == cluster[prompt]["route"]["task"],
                  f"{prompt!r}: one-process {describe(answer)}, cluster {describe(cluster[prompt])}")
    single.terminate()
    premoe.key_file, premoe.certs = admin_file, cluster_certs

    # SIGKILL the busier worker: the router retries on the other one. The first
    # queries go out within milliseconds, before the router's 500 ms health poll
    # can notice, so it still picks the dead worker, which holds their patterns.
    victim = max(range(2), key=lambda i: served[addresses[i]])
    survivor = addresses[1 - victim]
    client = InferenceClient(router, API_KEY)
    try:
        firsts = {task: prompt for task, prompt in reversed(prompts)}
        workers[victim].kill()
        for task, prompt in firsts.items():
            try:
                answer = client.query(prompt)
            except grpc.RpcError as e:
                check(False, f"right after SIGKILL of {addresses[victim]}: {prompt!r} "
                             f"failed: {e.code()}: {e.details()}")
                continue
            check(answer["route"]["worker"] == survivor and answer["route"]["task"] == task,
                  f"right after SIGKILL of {addresses[victim]}: {prompt!r} ({task}) "
                  f"{describe(answer)}, want {survivor}")
            if prompt in cluster:
                check(answer["text"] == cluster[prompt]["text"],
                      f"{prompt!r}: right after the kill {describe(answer)}, "
                      f"before {describe(cluster[prompt])}")
    finally:
        client.close()
    retried = "trying another worker" in router.output()
    print(f"the router {'retried' if retried else 'had already dropped'} the killed worker",
          flush=True)
    after = ask_cluster(f"after SIGKILL of {addresses[victim]}", [survivor])
    for prompt, answer in after.items():
        if prompt in cluster:
            check(answer["text"] == cluster[prompt]["text"],
                  f"{prompt!r}: after the kill {describe(answer)}, before {describe(cluster[prompt])}")
    status = serving(router)
    check(status == "SERVING", f"router health after a worker's SIGKILL: {status}")

    # SIGSTOP the last worker: it keeps its connections but answers nothing.
    # A query sent at once goes to it (the router's poll has not noticed), and
    # must fail once keepalive gives up on the connection, not hang.
    last = workers[1 - victim]
    last.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        r = premoe.run("query", "--address", router.address, "--prompt", prompts[0][1],
                       "--max-new-tokens", str(NEW_TOKENS), "--json", timeout=QUERY_TIMEOUT + 30)
        seconds = time.monotonic() - start
        check(r.returncode == 1 and "UNAVAILABLE" in r.stderr and seconds < STALL_FAILURE,
              f"a stopped worker: exit {r.returncode} after {seconds:.1f} s "
              f"(want 1, UNAVAILABLE, under {STALL_FAILURE} s): {r.stderr.strip()!r}")
        print(f"a query to the stopped worker failed after {seconds:.1f} s", flush=True)
    except subprocess.TimeoutExpired:
        check(False, f"a stopped worker: the query hung for {QUERY_TIMEOUT + 30} s")

    # SIGKILL the last worker: queries fail fast, both before the router's poll
    # notices (at once) and after (1.5 s later, three 500 ms polls).
    last.kill()
    for when in ("at once", "after the poll"):
        if when == "after the poll":
            time.sleep(1.5)
        prompt = prompts[0][1]
        try:
            code, _, err, seconds = premoe.query(router.address, prompt)
        except subprocess.TimeoutExpired:
            check(False, f"no workers, {when}: the query hung for {QUERY_TIMEOUT} s")
            continue
        check(code == 1 and "UNAVAILABLE" in err and seconds < QUICK_FAILURE,
              f"no workers, {when}: exit {code} after {seconds:.1f} s "
              f"(want 1, UNAVAILABLE, under {QUICK_FAILURE} s): {err.strip()!r}")

    router.terminate()
    store.terminate()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--premoe", default=os.path.join(os.environ.get("PREMOE_BINARY_DIR", ""),
                                                     "cli", "premoe"))
    premoe = Premoe(ap.parse_args().premoe)
    if not os.access(premoe.binary, os.X_OK):
        sys.exit(f"no premoe binary at {premoe.binary!r}: pass --premoe or set PREMOE_BINARY_DIR")
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            scenario(premoe, tmp)
        except (RuntimeError, subprocess.TimeoutExpired, grpc.RpcError) as e:
            check(False, f"{type(e).__name__}: {e}")
        finally:
            for server in Server.servers:
                if server.proc.poll() is None:
                    server.proc.kill()
                    server.proc.wait()
            if failures:
                for server in Server.servers:
                    print(f"--- {server.name} (exit {server.proc.returncode}) log:\n"
                          f"{server.output()}", flush=True)
    if failures:
        sys.exit(f"{len(failures)} failures")
    print(f"ok ({time.monotonic() - start:.1f} s)")


if __name__ == "__main__":
    main()
