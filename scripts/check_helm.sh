#!/usr/bin/env bash
# Checks the Helm chart helm/premoe, offline:
#  1. every value in values.yaml and values-multigpu.yaml has a comment;
#  2. `helm lint --strict` with each values set;
#  3. `helm template` with the default values, with values-multigpu.yaml, and
#     with a profiling-Job set (profileJob on, inline calibration data, the
#     image-baked model, a CPU worker, no autoscaler) that covers the other
#     branches of the templates;
#  4. every rendered object is validated against the Kubernetes API's JSON
#     schemas, strictly (an unknown field fails, as does a kind without a
#     schema), for each Kubernetes version in KUBE_VERSIONS, and checked for
#     the chart's own invariants (non-root, read-only root, gRPC probes,
#     GPUs = --world-size, the router's store and worker addresses).
#
# Tools (installed by scripts/setup.sh, from PyPI, pinned there):
#  - helm-python-sdk: Helm's official Go SDK (v4) as a C library; scripts/helm.py
#    is a `helm lint` / `helm template` command line over it. No registry this
#    project reaches ships the helm binary; set HELM=helm to use one instead.
#  - kubernetes-validate: the Kubernetes OpenAPI schemas as JSON schemas,
#    1.25 to 1.37, strict variants included.
# Environment: PREMOE_PYTHON (default .venv/bin/python), HELM, KUBE_VERSIONS.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PREMOE_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=.venv/bin/python
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.29.0 1.37.0"}
CHART=helm/premoe
if [ -n "${HELM:-}" ]; then
  read -r -a helm <<<"$HELM"
else
  helm=("$PY" scripts/helm.py)
fi

if ! "$PY" -c 'import kubernetes_validate, helm_python' 2>/dev/null; then
  echo "check_helm: kubernetes-validate or helm-python-sdk is missing from $PY; run scripts/setup.sh" >&2
  exit 1
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# A values set for the profiling Job and the other template branches.
cat >"$out/profile-values.yaml" <<'EOF'
model:
  source: image
worker:
  gpusPerWorker: 0
  podAntiAffinity: none
router:
  autoscaling:
    enabled: false
profileJob:
  enabled: true
  task: Code Review
  samples: 64
  streamed: true
  extraArgs: ["--metric", "peu"]
  data:
    inline: |
      {"prompt": "def add(a, b):", "completion": " return a + b"}
      {"prompt": "Review: x = x + 1", "completion": " x += 1"}
EOF

sets=(default multigpu profile)
declare -A set_args=(
  [default]=""
  [multigpu]="-f $CHART/values-multigpu.yaml"
  [profile]="-f $out/profile-values.yaml"
)

echo "== check_helm: values documented"
"$PY" - "$CHART/values.yaml" "$CHART/values-multigpu.yaml" <<'PY'
# A value is documented by a comment on its own key (the line above, or at the
# end of the line) or on a key that encloses it (e.g. `resources:` documents
# its requests and limits). Every leaf must be documented; a map whose every
# value is documented needs no comment of its own.
import re, sys
bad = []
for path in sys.argv[1:]:
    lines = open(path, encoding="utf-8").read().split("\n")
    stack = []  # (indent, documented) of the enclosing keys
    for i, line in enumerate(lines):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        ind = len(line) - len(line.lstrip())
        m = re.match(r"(- )?([A-Za-z0-9_.\"'/-]+):(\s|$)", s)
        while stack and ind <= stack[-1][0] and not (s.startswith("- ") and ind == stack[-1][0]):
            stack.pop()
        if s.startswith("- ") or not m:
            continue  # a list item: documented with its list
        prev = lines[i - 1].strip() if i else ""
        documented = prev.startswith("#") or " #" in s or any(d for _, d in stack)
        rest = s[m.end():].strip()
        is_leaf = rest != "" and not rest.startswith("#")
        if is_leaf and not documented:
            bad.append(f"{path}:{i + 1}: {s}")
        if not is_leaf:
            nxt = next((l for l in lines[i + 1:] if l.strip() and not l.strip().startswith("#")), "")
            nind = len(nxt) - len(nxt.lstrip())
            if not (nind > ind or nxt.strip().startswith("- ")) and not documented:
                bad.append(f"{path}:{i + 1}: {s}")  # an empty value
            stack.append((ind, documented))
if bad:
    print("values without a comment:\n  " + "\n  ".join(bad))
    sys.exit(1)
print("every value has a comment")
PY

echo "== check_helm: helm lint --strict ($("${helm[@]}" version 2>/dev/null || echo helm))"
for s in "${sets[@]}"; do
  # shellcheck disable=SC2086
  "${helm[@]}" lint "$CHART" --strict --kube-version "v${KUBE_VERSIONS%% *}" ${set_args[$s]} \
    >"$out/lint-$s.txt" || { cat "$out/lint-$s.txt"; echo "check_helm: helm lint failed ($s)"; exit 1; }
  echo "$s: $(tail -n 1 "$out/lint-$s.txt")"
done

echo "== check_helm: helm template"
for s in "${sets[@]}"; do
  # shellcheck disable=SC2086
  "${helm[@]}" template premoe "$CHART" --namespace premoe ${set_args[$s]} >"$out/$s.yaml"
done

echo "== check_helm: Kubernetes schemas (strict) and chart invariants, Kubernetes $KUBE_VERSIONS"
"$PY" - "$KUBE_VERSIONS" "$out" "${sets[@]}" <<'PY'
import collections, os, sys
import yaml
import kubernetes_validate as kv
from kubernetes_validate import utils as kvu

versions = sys.argv[1].split()
out = sys.argv[2]
failed = False


errors = collections.Counter()


def fail(where, msg):
    global failed
    failed = True
    errors[where.split(":")[0].split(" ")[0]] += 1
    print(f"ERROR {where}: {msg}")


def arg_after(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


def check_invariants(where, docs):
    by_kind = collections.defaultdict(dict)
    for d in docs:
        by_kind[d["kind"]][d["metadata"]["name"]] = d
    for d in docs:
        spec = d.get("spec", {})
        tmpl = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if not tmpl:
            continue
        name = f"{where} {d['kind']}/{d['metadata']['name']}"
        pod = tmpl["spec"]
        psc = pod.get("securityContext", {})
        if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 10001
                and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
            fail(name, "pod securityContext is not non-root 10001 with RuntimeDefault seccomp")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if not (sc.get("readOnlyRootFilesystem") is True
                    and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"]
                    and sc.get("runAsNonRoot") is True):
                fail(name, f"container {c['name']}: securityContext is not locked down")
            if not any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])):
                fail(name, f"container {c['name']}: no writable /tmp")
            if d["kind"] != "Job":
                port = c["ports"][0]["containerPort"]
                for p in ("startupProbe", "livenessProbe", "readinessProbe"):
                    g = c.get(p, {}).get("grpc")
                    if not g or g.get("port") != port:
                        fail(name, f"{p} is not a gRPC probe on port {port}")
                if c.get("livenessProbe", {}).get("grpc", {}).get("service") != "":
                    fail(name, "liveness must ask the health service \"\"")
            else:
                slug = d["metadata"]["labels"].get("premoe.io/task", "")
                if not slug or slug not in d["metadata"]["name"]:
                    fail(name, f"the Job's name and premoe.io/task label must carry the task ({slug!r})")
    # The components and how they find each other.
    ns = "premoe"
    store_svc = next((n for n in by_kind["Service"] if n.endswith("-store")), None)
    headless = next((s for s in by_kind["Service"].values() if s["spec"].get("clusterIP") == "None"), None)
    if not store_svc or not headless:
        fail(where, "store Service or worker headless Service missing")
        return
    if headless["spec"].get("publishNotReadyAddresses") is not False:
        fail(where, "worker headless Service publishes not-ready addresses")
    expect = {"store": (store_svc, 50052), "workers-dns": (headless["metadata"]["name"], 50053)}
    router = next(d for n, d in by_kind["Deployment"].items() if n.endswith("-router"))
    rargs = router["spec"]["template"]["spec"]["containers"][0]["args"]
    for flag, (svc, port) in expect.items():
        want = f"{svc}.{ns}.svc.cluster.local:{port}"
        if arg_after(rargs, "--" + flag) != want:
            fail(where, f"router --{flag} is {arg_after(rargs, '--' + flag)!r}, want {want!r}")
    if rargs[:3] != ["--log-level", "info", "serve"]:
        fail(where, "--log-level must come before the subcommand")
    for w in (d for n, d in by_kind["StatefulSet"].items() if n.endswith("-worker")):
        c = w["spec"]["template"]["spec"]["containers"][0]
        gpus = c["resources"].get("limits", {}).get("nvidia.com/gpu", 0)
        if c["resources"].get("requests", {}).get("nvidia.com/gpu", 0) != gpus:
            fail(where, "worker GPU requests differ from limits")
        if arg_after(c["args"], "--world-size") != str(max(1, gpus)):
            fail(where, f"worker --world-size {arg_after(c['args'], '--world-size')} with {gpus} GPUs")
        if arg_after(c["args"], "--device") != ("cuda" if gpus else "cpu"):
            fail(where, f"worker --device {arg_after(c['args'], '--device')} with {gpus} GPUs")
        shm = [v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == "dshm"]
        if not shm or shm[0].get("emptyDir", {}).get("medium") != "Memory":
            fail(where, "worker has no in-memory /dev/shm")


for s in sys.argv[3:]:
    with open(os.path.join(out, s + ".yaml"), encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kinds = collections.Counter(d.get("kind", "?") for d in docs)
    seen = set()
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"), d.get("metadata", {}).get("name"))
        where = f"{s}: {key[1]}/{key[2]}"
        if key in seen:
            fail(where, "rendered twice")
        seen.add(key)
        for v in versions:
            try:
                kvu.validate(d, v, strict=True)
            except kvu.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                fail(where, f"Kubernetes {e.version}: {path}: {e.message}")
            except kvu.SchemaNotFoundError as e:
                fail(where, e.message)
    check_invariants(s, docs)
    summary = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(kinds.items()))
    verdict = f"{errors[s]} ERRORS" if errors[s] else "valid"
    print(f"{s}: {len(docs)} objects {verdict} against Kubernetes "
          f"{', '.join(kvu.major_minor(v) for v in versions)} (strict): {summary}")
print(f"(kubernetes-validate {kv.__version__ if hasattr(kv, '__version__') else ''})".replace(" )", ")"))
sys.exit(1 if failed else 0)
PY
echo "check_helm: ok"
