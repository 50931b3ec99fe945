"""The OpenAI-compatible HTTP API, end to end, with the official `openai` client.

A cluster of real processes on loopback (a store profiled with two testbed
tasks, a worker, a router with API keys) serves the HTTP API beside gRPC.
Through openai.OpenAI:
- /v1/models names the served model;
- completions and chat completions, streaming and not, give the answers the
  gRPC API (`premoe query`) gives for the same prompt, with usage, finish
  reasons, stop strings and max_tokens as OpenAI defines them;
- extra_body task and budget pick the pattern, and the route comes back in
  the `premoe` object and the X-Premoe-* headers;
- a bad request is an SDK error object (400 naming the field, 404 for an
  unknown model, 401 without a key);
- a client that disconnects mid-stream frees its worker slot (the worker
  counts the request cancelled and runs nothing);
and `curl -N` reads the raw Server-Sent Events.

usage: openai_api_test.py --premoe PATH
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time

import openai

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testutil"))
from serve_procs import Processes  # noqa: E402

MODEL = "testbed/model"
TASKS = ("add", "reverse")
KEY = "openai-test-key-0123456789"

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def grpc_answer(premoe, address, prompt, max_new_tokens, *extra):
    out = premoe.run("--key-file", premoe.key_file, "query", "--address", address, "--prompt", prompt,
                     "--max-new-tokens", str(max_new_tokens), "--json", *extra)
    return json.loads(out)


def request(port, method, path, body=None, headers=None):
    """(status, headers, parsed JSON body) of one plain HTTP request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(data) if data else None


def worker_status(premoe, address):
    return json.loads(premoe.run("worker", "status", "--address", address, "--json"))


def scenario(premoe):
    tmp = premoe.tmp
    keys = os.path.join(tmp, "keys")
    with open(keys, "w") as f:
        f.write(KEY + "\n")
    premoe.key_file = keys
    store_port = premoe.serve("store", "--role", "store", "--store-dir", f"{tmp}/store")
    for task in TASKS:
        premoe.run("profile", "--model", MODEL, "--task", task, "--testbed-task", task,
                   "--samples", "8", "--store", f"127.0.0.1:{store_port}")
    # The worker has no keys (loopback, test only); the router's API asks for them.
    worker_port = premoe.serve("worker", "--role", "worker", "--model", MODEL, "--dtype", "fp32",
                               "--max-batch", "1", "--max-queue", "1",
                               log_args=("--log-level", "debug"))
    worker = f"127.0.0.1:{worker_port}"
    grpc_port, http_port = premoe.serve(
        "router", "--role", "router", "--model", MODEL, "--store", f"127.0.0.1:{store_port}",
        "--workers", worker, "--api-key-file", keys, "--budget", "50%", http=True,
        log_args=("--log-level", "info", "--log-format", "json"))
    grpc = f"127.0.0.1:{grpc_port}"
    base = f"http://127.0.0.1:{http_port}/v1"
    client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=120)

    # Health and the model list.
    status, _, body = request(http_port, "GET", "/health")
    check(status == 200, f"/health is 200 once ready ({status} {body})")
    models = client.models.list()
    check([m.id for m in models.data] == [MODEL], f"/v1/models lists {MODEL}: {[m.id for m in models.data]}")

    prompts = {"add": "What is 12 + 30?", "reverse": "Reverse: banana"}
    for task, prompt in prompts.items():
        want = grpc_answer(premoe, grpc, prompt, 16)
        c = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
        check(c.choices[0].text == want["text"],
              f"completion of {prompt!r} equals gRPC's: {c.choices[0].text!r} vs {want['text']!r}")
        route = c.model_extra["premoe"]
        check(route["task"] == want["route"]["task"] and route["decision"] == want["route"]["decision"],
              f"the route is gRPC's: {route['task']}/{route['decision']} vs "
              f"{want['route']['task']}/{want['route']['decision']}")
        check(c.object == "text_completion" and c.id.startswith("cmpl-") and c.created > 0,
              f"completion envelope: {c.object} {c.id}")
        check(c.usage.completion_tokens == want["completion_tokens"]
              and c.usage.prompt_tokens == want["prompt_tokens"]
              and c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens,
              f"usage {c.usage} matches gRPC's tokens")
        # Chat: the testbed's template renders one user message as the prompt.
        chat = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0)
        check(chat.choices[0].message.content == want["text"] and chat.choices[0].message.role == "assistant",
              f"chat answer equals gRPC's: {chat.choices[0].message.content!r}")
        check(chat.choices[0].finish_reason in ("stop", "length"), f"finish_reason {chat.choices[0].finish_reason}")
        # Streaming chat: the deltas make the same text; usage comes last.
        deltas, finish, usage, roles, route_chunk = [], None, None, [], None
        for chunk in client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=16,
                temperature=0, stream=True, stream_options={"include_usage": True}):
            if chunk.usage is not None:
                usage = chunk.usage
            for ch in chunk.choices:
                if ch.delta.role:
                    roles.append(ch.delta.role)
                if ch.delta.content:
                    deltas.append(ch.delta.content)
                if ch.finish_reason:
                    finish = ch.finish_reason
                    route_chunk = (chunk.model_extra or {}).get("premoe")
        check("".join(deltas) == want["text"], f"streamed chat {''.join(deltas)!r} equals gRPC's")
        check(roles == ["assistant"] and finish == chat.choices[0].finish_reason,
              f"stream roles {roles}, finish {finish}")
        check(usage is not None and usage.completion_tokens == want["completion_tokens"],
              f"stream usage {usage}")
        check(route_chunk is not None and route_chunk["task"] == want["route"]["task"],
              f"the last chunk carries the route: {route_chunk}")

    # Stop strings and max_tokens.
    prompt = prompts["reverse"]
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    text = full.choices[0].text
    check(len(text) >= 3, f"the reverse answer {text!r} is long enough to cut")
    if len(text) >= 3:
        stop = text[-2:]
        cut = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=[stop])
        check(cut.choices[0].text == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop",
              f"stop {stop!r} cuts {text!r} to {cut.choices[0].text!r} ({cut.choices[0].finish_reason})")
    short = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0,
                                      extra_body={"ignore_eos": True})
    check(short.usage.completion_tokens == 1 and short.choices[0].finish_reason == "length",
          f"max_tokens 1: {short.usage.completion_tokens} tokens, {short.choices[0].finish_reason}")

    # premoe's own controls through extra_body, the route in headers too.
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": prompts["add"]}], max_tokens=8,
        extra_body={"task": "reverse", "budget": "25%"})
    forced = raw.parse()
    route = forced.model_extra["premoe"]
    check(route["task"] == "reverse" and route["decision"] == "task" and route["budget"] == "25%",
          f"extra_body task/budget: {route['task']}/{route['decision']}/{route['budget']}")
    check(raw.headers.get("x-premoe-task") == "reverse" and raw.headers.get("x-premoe-decision") == "task"
          and int(raw.headers.get("x-premoe-kept-bytes")) == route["kept_bytes"],
          f"route headers: {dict((k, v) for k, v in raw.headers.items() if k.startswith('x-premoe'))}")
    check(len(raw.headers.get("x-request-id", "")) > 0 and forced.id.endswith(raw.headers["x-request-id"]),
          f"request id {raw.headers.get('x-request-id')} in {forced.id}")
    half = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompts["add"]}], max_tokens=8,
        extra_body={"task": "reverse", "budget": "50%"})
    check(half.model_extra["premoe"]["kept_bytes"] > route["kept_bytes"],
          f"a 50% budget keeps more than 25%: {half.model_extra['premoe']['kept_bytes']} > {route['kept_bytes']}")
    _, headers, body = request(http_port, "POST", "/v1/chat/completions",
                            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                            {"Authorization": f"Bearer {KEY}", "X-Request-Id": "my-id-1"})
    check(headers.get("x-request-id") == "my-id-1" and body["id"] == "chatcmpl-my-id-1",
          f"a client's X-Request-Id is kept: {headers.get('x-request-id')} {body.get('id')}")
    # It names the request in the router's log (JSON lines) and, carried in
    # gRPC metadata, in the worker's.
    router_lines = [json.loads(l) for l in open(os.path.join(tmp, "router.log")) if l.startswith("{")]
    mine = [l for l in router_lines if l.get("request_id") == "my-id-1"]
    recent = [l for l in router_lines if "chat/completions" in l["msg"]][-2:]
    check(len(mine) == 1 and "/v1/chat/completions 200" in mine[0]["msg"] and mine[0]["level"] == "info",
          f"the router's JSON log line for my-id-1: {mine} (recent: {recent})")
    worker_lines = [l for l in open(os.path.join(tmp, "worker.log")) if "[my-id-1]" in l]
    check(len(worker_lines) == 1 and "Generate done" in worker_lines[0],
          f"the worker's log names my-id-1: {worker_lines}")

    # Errors, as the SDK sees them.
    def error_of(fn):
        try:
            fn()
        except openai.APIStatusError as e:
            return e
        return None
    e = error_of(lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]))
    check(isinstance(e, openai.BadRequestError) and e.body and e.body.get("param") == "tools"
          and "tools" in e.message, f"tools -> 400 naming the field: {e!r}")
    e = error_of(lambda: client.chat.completions.create(model=MODEL, n=2, messages=[{"role": "user", "content": "x"}]))
    check(isinstance(e, openai.BadRequestError) and e.body.get("param") == "n", f"n=2 -> 400: {e!r}")
    e = error_of(lambda: client.completions.create(model="gpt-4", prompt="x"))
    check(isinstance(e, openai.NotFoundError), f"an unknown model -> 404: {e!r}")
    e = error_of(lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]))
    check(isinstance(e, openai.BadRequestError) and "single user message" in e.message,
          f"the chat template's refusal -> 400: {e!r}")
    e = error_of(lambda: client.completions.create(model=MODEL, prompt="x", extra_body={"tempreature": 0}))
    check(isinstance(e, openai.BadRequestError) and e.body.get("param") == "tempreature",
          f"an unknown field -> 400 naming it: {e!r}")
    nokey = openai.OpenAI(base_url=base, api_key="wrong-key-0123456789", max_retries=0)
    e = error_of(lambda: nokey.models.list())
    check(isinstance(e, openai.AuthenticationError), f"a wrong key -> 401: {e!r}")

    # curl -N reads the raw event stream.
    curl = subprocess.run(
        ["curl", "-sN", f"{base}/completions", "-H", f"Authorization: Bearer {KEY}",
         "-H", "Content-Type: application/json",
         "-d", json.dumps({"model": MODEL, "prompt": prompts["add"], "max_tokens": 8, "stream": True})],
        capture_output=True, text=True, timeout=60)
    events = [l[len("data: "):] for l in curl.stdout.split("\n") if l.startswith("data: ")]
    pieces = [json.loads(e)["choices"][0]["text"] for e in events[:-1]]
    want = grpc_answer(premoe, grpc, prompts["add"], 8)
    check(events and events[-1] == "[DONE]" and "".join(pieces) == want["text"],
          f"curl -N: {len(events)} events ending [DONE], text {''.join(pieces)!r}")

    # A client that goes away mid-stream frees its worker slot.
    before = worker_status(premoe, worker)
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=60)
    conn.request("POST", "/v1/completions",
                 body=json.dumps({"model": MODEL, "prompt": prompts["add"], "max_tokens": 230,
                                  "ignore_eos": True, "stream": True}),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    r = conn.getresponse()
    got = 0
    while got < 2:
        if r.readline().startswith(b"data: "):
            got += 1
    conn.sock.shutdown(2)  # gone, mid-stream
    conn.close()
    deadline = time.monotonic() + 20
    status = worker_status(premoe, worker)
    while time.monotonic() < deadline and not (status["running"] == 0 and status["cancelled"] > before["cancelled"]):
        time.sleep(0.1)
        status = worker_status(premoe, worker)
    check(status["running"] == 0 and status["cancelled"] == before["cancelled"] + 1,
          f"disconnect mid-stream: the worker cancelled it (cancelled {before['cancelled']} -> "
          f"{status['cancelled']}, running {status['running']})")
    after = client.completions.create(model=MODEL, prompt=prompts["add"], max_tokens=8, temperature=0)
    check(after.choices[0].text == want["text"], "the freed slot serves the next request")

    # A full worker (batch 1, queue 1): six requests at once, each of 230
    # tokens; one or two fit (the second only if the first has left the queue
    # for the batch), the others are 429 with Retry-After.
    def attempt(_):
        try:
            client.completions.create(model=MODEL, prompt=prompts["add"], max_tokens=230,
                                      extra_body={"ignore_eos": True})
            return "ok"
        except openai.RateLimitError as e:
            return f"429 retry-after {e.response.headers.get('retry-after')}"
        except openai.APIStatusError as e:
            return f"{e.status_code} {e.message}"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(attempt, range(6)))
    check(outcomes.count("ok") >= 1 and outcomes.count("429 retry-after 1") >= 1
          and outcomes.count("ok") + outcomes.count("429 retry-after 1") == 6,
          f"a full worker -> 429 with Retry-After: {outcomes}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--premoe", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        premoe = Processes(os.path.abspath(args.premoe), tmp)
        try:
            scenario(premoe)
        except Exception:
            premoe.print_logs("store", "worker", "router")
            raise
        finally:
            premoe.stop()
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
