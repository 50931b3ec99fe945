#!/usr/bin/env python3
"""`helm lint` and `helm template` through Helm's own Go SDK, for machines
without the helm binary.

No registry this project reaches (Debian bookworm, PyPI) ships a Linux `helm`
executable. PyPI's helm-python-sdk ships libhelm_c, a C ABI over Helm's
official Go SDK (helm.sh/helm/v4), so the chart is linted and rendered by
Helm's real engine and linter, not by a reimplementation. This file is only a
command line over it, with helm's subcommand and flag names, so that
scripts/check_helm.sh runs the same commands with either (HELM=helm uses a
real binary).

  helm.py lint CHART [-f VALUES]... [--set K=V]... [--strict] [--kube-version V]
  helm.py template RELEASE CHART [-f VALUES]... [--set K=V]... [-n NAMESPACE]
  helm.py version

Values files and --set are merged as helm merges them: files in order, then
--set, maps merged key by key, anything else replaced.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = value
    return dst


def _user_values(helm: Any, files: list[str], sets: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            # Helm's own YAML parser (sigs.k8s.io/yaml), not PyYAML.
            _merge(values, helm.values_from_yaml(f.read()) or {})
    for expr in sets:
        _merge(values, helm.parse_set_string(expr))
    return values


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="helm.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    lint = sub.add_parser("lint", help="examine a chart for possible issues")
    lint.add_argument("chart")
    template = sub.add_parser("template", help="render the chart's manifests locally")
    template.add_argument("release")
    template.add_argument("chart")
    template.add_argument("-n", "--namespace", default="default")
    for p in (lint, template):
        p.add_argument("-f", "--values", action="append", default=[], metavar="FILE")
        p.add_argument("--set", action="append", default=[], metavar="K=V")
    lint.add_argument("--strict", action="store_true", help="fail on lint warnings")
    lint.add_argument("--kube-version", default=None, help="e.g. v1.29.0")
    sub.add_parser("version", help="print the Helm SDK version")
    args = parser.parse_args(argv)

    try:
        import helm_python as helm
    except ImportError:
        print("helm.py: the Python package helm-python-sdk is missing; run scripts/setup.sh",
              file=sys.stderr)
        return 2
    helm.disable_logging()

    if args.cmd == "version":
        print(f"Helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}, "
              f"libhelm_c {helm.helm_c_version()})")
        return 0

    try:
        values = _user_values(helm, args.values, args.set)
    except (OSError, helm.HelmError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1

    if args.cmd == "lint":
        # Severity: 1 info, 2 warning, 3 error (helm's support.Severity).
        names = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
        report = helm.lint(args.chart, values, strict=args.strict,
                           kube_version=args.kube_version)
        print(f"==> Linting {args.chart}")
        worst = 0
        for m in report.get("messages") or []:
            sev = int(m.get("severity", 0))
            worst = max(worst, sev)
            print(f"[{names.get(sev, sev)}] {m.get('path', '')}: {m.get('error', '')}")
        for e in report.get("errors") or []:
            worst = 3
            print(f"[ERROR] {e}")
        failed = worst >= 3 or (args.strict and worst >= 2)
        print(f"\n{report.get('total_charts_linted', 1)} chart(s) linted, "
              f"{1 if failed else 0} chart(s) failed")
        return 1 if failed else 0

    # template: what `helm template` does, an install dry run on the client
    # only, with in-memory release storage; no cluster is contacted.
    try:
        cfg = helm.Config(namespace=args.namespace, storage_driver="memory")
        release = cfg.install(args.chart, args.release, values, namespace=args.namespace,
                              dry_run="client")
    except helm.HelmError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(release["manifest"])
    if not release["manifest"].endswith("\n"):
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
