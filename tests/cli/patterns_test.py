"""`premoe patterns` end to end, on the committed testbed model.

Profiles the testbed tasks `add` and `reverse` into a store directory, then:
list and show describe them; export -> import into a new store gives the same
patterns (creation times included; ids are the new store's); an import into
a store of another model (the testbed model with one router weight changed)
is refused and leaves that store as it was; damaged archives are refused with
a message naming the problem and import nothing; search ranks each task's
own kind of prompt first; delete removes a pattern; check says OK; usage
errors exit 2.

usage: patterns_test.py --premoe PATH
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.normpath(os.path.join(HERE, "..", "..", "testbed", "model"))
TASKS = ["add", "reverse"]
SAMPLES = 8

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL {what}", flush=True)


class Premoe:
    def __init__(self, binary):
        self.binary = binary

    def run(self, *args):
        return subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=600)

    def ok(self, *args):
        r = self.run(*args)
        if r.returncode != 0:
            sys.exit(f"premoe {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r.stdout

    def json(self, *args):
        return json.loads(self.ok(*args))

    def listed(self, store):
        return self.json("patterns", "list", "--store", store, "--json")

    def show(self, store, task):
        return self.json("patterns", "show", "--store", store, "--task", task, "--json")


def profile(premoe, model, store, tasks, samples=SAMPLES):
    for task in tasks:
        premoe.ok("profile", "--model", model, "--task", task, "--testbed-task", task,
                  "--samples", str(samples), "--store", store)


def other_model(out):
    """The testbed model with one router weight changed: another fingerprint."""
    os.makedirs(out)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(MODEL, name), out)
    weights = load_file(os.path.join(MODEL, "model.safetensors"))
    gate = "model.layers.0.mlp.gate.weight"
    weights[gate] = weights[gate].clone()
    weights[gate][0, 0] += 0.5
    save_file(weights, os.path.join(out, "model.safetensors"))


def refused(r, *needles):
    return r.returncode == 1 and all(n in r.stderr for n in needles)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--premoe", required=True)
    premoe = Premoe(ap.parse_args().premoe)
    with open(os.path.join(MODEL, "config.json")) as f:
        config = json.load(f)  # qwen3_moe, every layer MoE
    tmp = tempfile.mkdtemp(prefix="premoe_patterns_test_")
    try:
        store = os.path.join(tmp, "store")
        profile(premoe, MODEL, store, TASKS)

        # list: both, in id order, with their shapes.
        listed = premoe.listed(store)
        check([p["task"] for p in listed] == TASKS, f"list: {listed}")
        for p in listed:
            check(p["metric"] == "peu" and p["layers"] == config["num_hidden_layers"]
                  and p["embeddings"] == SAMPLES, f"list entry {p}")
            check(p["created"].endswith("Z") and p["created"][10] == "T", f"created {p['created']}")
        table = premoe.ok("patterns", "list", "--store", store)
        check(table.split("\n")[0].split() == ["id", "task", "metric", "layers", "embeddings",
                                                "created"], f"list header: {table}")
        check(all(t in table for t in TASKS), f"list table: {table}")

        # show: everything about one pattern; top experts sorted by score.
        shown = {t: premoe.show(store, t) for t in TASKS}
        add = shown["add"]
        check(add["task"] == "add" and add["metric"] == "peu", f"show: {add}")
        check(add["metric_params"] == {"k": str(config["num_experts_per_tok"]), "r": "per_task",
                                       "transform": "max_sigmoid"}, f"params {add['metric_params']}")
        check(add["calibration"]["samples"] == SAMPLES and add["calibration"]["tokens"] > 0,
              f"calibration {add['calibration']}")
        check(add["embeddings"] == {"count": SAMPLES, "dim": config["num_experts"]},
              f"embeddings {add['embeddings']}")
        check(len(add["layers"]) == config["num_hidden_layers"], "layer count")
        for layer in add["layers"]:
            scores = [e["score"] for e in layer["top"]]
            check(layer["experts"] == config["num_experts"] and len(scores) == 8
                  and scores == sorted(scores, reverse=True), f"layer {layer}")
        by_id = premoe.json("patterns", "show", "--store", store, "--id", str(add["id"]), "--json",
                            "--top", "3")
        check([l["top"] for l in by_id["layers"]] == [l["top"][:3] for l in add["layers"]],
              "show --id --top 3 is the first 3 of the top 8")
        text = premoe.ok("patterns", "show", "--store", store, "--task", "add")
        check(f"pattern {add['id']}: task add" in text and "layer   0" in text, f"show text: {text}")

        # export -> import into a new store: the same patterns.
        archive = os.path.join(tmp, "patterns.pmar")
        check("exported 2 patterns" in premoe.ok("patterns", "export", "--store", store, "--out",
                                                 archive), "export")
        copy = os.path.join(tmp, "copy")
        out = premoe.ok("patterns", "import", "--store", copy, "--in", archive)
        check("imported add as id 1 (new)" in out and "imported reverse as id 2 (new)" in out,
              f"import: {out}")
        for t in TASKS:
            a, b = shown[t], premoe.show(copy, t)
            check(isinstance(b.pop("id"), int) and a["created"] == b["created"]
                  and {**a, "id": 0} == {**b, "id": 0}, f"imported {t} differs: {a} vs {b}")
        out = premoe.ok("patterns", "import", "--store", copy, "--in", archive, "--dry-run")
        check("would import add (replacing the store's)" in out and "nothing written" in out,
              f"dry run: {out}")
        subset = os.path.join(tmp, "subset.pmar")
        premoe.ok("patterns", "export", "--store", store, "--out", subset, "--tasks", "reverse")
        only = os.path.join(tmp, "only")
        premoe.ok("patterns", "import", "--store", only, "--in", subset)
        check([p["task"] for p in premoe.listed(only)] == ["reverse"], "export --tasks")

        # Another model's store refuses the archive, whole.
        other = os.path.join(tmp, "other_model")
        other_model(other)
        other_store = os.path.join(tmp, "other_store")
        profile(premoe, other, other_store, ["add"], samples=2)
        before = premoe.listed(other_store)
        r = premoe.run("patterns", "import", "--store", other_store, "--in", archive)
        check(refused(r, "record 0 (task add) is a pattern of model", "serves model",
                      "nothing was imported"), f"other model: {r.returncode} {r.stderr}")
        check(premoe.listed(other_store) == before, "other model's store changed")

        # Damaged archives: refused, naming the problem; nothing imported.
        data = open(archive, "rb").read()
        flipped = bytearray(data)
        flipped[12 + 16 + 40] ^= 0x01  # inside record 0's payload
        damaged = {"flipped": (bytes(flipped), ["record 0 at byte 12", "checksum mismatch"]),
                   "no trailer": (data[:-24], ["without the archive's trailer (truncated)"]),
                   "cut in a record": (data[:300], ["record 0 at byte 12", "truncated"])}
        before = premoe.listed(only)
        for name, (bytes_, needles) in damaged.items():
            bad = os.path.join(tmp, "bad.pmar")
            open(bad, "wb").write(bytes_)
            r = premoe.run("patterns", "import", "--store", only, "--in", bad)
            check(refused(r, "DATA_LOSS", bad, *needles), f"{name}: {r.returncode} {r.stderr}")
            check(premoe.listed(only) == before, f"{name}: the store changed")
            fresh = os.path.join(tmp, "never")
            premoe.run("patterns", "import", "--store", fresh, "--in", bad)
            check(not os.path.exists(fresh), f"{name}: a store was created")

        # search: each task's kind of prompt finds its pattern first.
        for prompt, want in (("What is 17 + 25?", "add"), ("Reverse: garden", "reverse")):
            ranked = premoe.json("patterns", "search", "--store", store, "--model", MODEL,
                                 "--prompt", prompt, "--k", "2", "--json")
            check([m["task"] for m in ranked][:1] == [want] and len(ranked) == 2
                  and ranked[0]["similarity"] >= ranked[1]["similarity"],
                  f"search {prompt!r}: {ranked}")
        r = premoe.run("patterns", "search", "--store", store, "--model", other, "--prompt", "1+1")
        check(refused(r, "holds patterns of another model"),
              f"search with another model: {r.stderr}")

        # delete, then check.
        out = premoe.ok("patterns", "delete", "--store", store, "--task", "add")
        check("deleted pattern 1 (task add)" in out, f"delete: {out}")
        check([p["task"] for p in premoe.listed(store)] == ["reverse"], "after delete")
        r = premoe.run("patterns", "show", "--store", store, "--task", "add")
        check(refused(r, "NOT_FOUND", "no pattern for task \"add\""), f"show deleted: {r.stderr}")
        out = premoe.ok("patterns", "check", "--store", store)
        check(out.startswith("OK: 1 patterns, 8 embeddings"), f"check: {out}")

        # Usage errors exit 2; a missing store is an error, not a new store.
        for args in (["show", "--store", store],
                     ["show", "--store", store, "--id", "1", "--task", "add"],
                     ["check", "--store", "localhost:1234"],
                     ["list"],
                     ["search", "--store", store, "--model", MODEL, "--prompt", "x", "--voting",
                      "median"]):
            r = premoe.run("patterns", *args)
            check(r.returncode == 2, f"usage {args}: {r.returncode} {r.stderr}")
        missing = os.path.join(tmp, "missing")
        r = premoe.run("patterns", "list", "--store", missing)
        check(refused(r, "no pattern store there") and not os.path.exists(missing),
              f"missing store: {r.stderr}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        sys.exit(f"{len(failures)} checks failed")
    print("patterns CLI: all checks passed")


if __name__ == "__main__":
    main()
