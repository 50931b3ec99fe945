#!/usr/bin/env python3
"""Regenerates the testbed's text corpora (testbed/data/*.txt) and MANIFEST.json.

The testbed's two text tasks (premoe::testbed, tasks.h) read windows of these
files, which are committed and embedded in the library at build time; this
script documents how they were made and checks them.

  licenses.txt    the Debian common licences listed in LICENSES, whole, in order
  c_headers.txt   glibc headers from /usr/include, whole files in the order of
                  HEADERS, taken until the total reaches C_HEADERS_TARGET bytes

Each source file is preceded by a line "==> PATH_OR_NAME <==". MANIFEST.json
records every source's absolute path, size and sha256, and the sha256 and size
of each concatenation, so a regeneration on another machine (other Debian
package versions) shows what changed.

usage: make_testbed_corpus.py [--out DIR]   regenerate from this machine's files
       make_testbed_corpus.py --check       verify the committed corpora against
                                            MANIFEST.json (no sources needed)
"""
import argparse
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "testbed", "data")

LICENSE_DIR = "/usr/share/common-licenses"
LICENSES = ["Apache-2.0", "GPL-2", "GPL-3", "LGPL-2.1", "MPL-2.0", "Artistic", "BSD"]

HEADER_DIR = "/usr/include"
HEADERS = ["stdio.h", "stdlib.h", "string.h", "unistd.h", "fcntl.h", "signal.h", "time.h",
           "math.h", "errno.h", "ctype.h", "pthread.h"]
# Whole headers are added, in order, while the total is below this.
C_HEADERS_TARGET = 150_000


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def build(label_and_paths):
    """Concatenates (label, path) sources; returns (bytes, manifest sources)."""
    out = bytearray()
    sources = []
    for label, path in label_and_paths:
        with open(path, "rb") as f:
            data = f.read()
        if any(b > 0x7F for b in data):
            sys.exit(f"{path}: not ASCII; the text tasks' windows must be valid UTF-8 "
                     "wherever they are cut")
        out += f"==> {label} <==\n".encode("ascii")
        out += data
        if not data.endswith(b"\n"):
            out += b"\n"
        sources.append({"path": path, "bytes": len(data), "sha256": sha256(data)})
    return bytes(out), sources


def generate(out_dir):
    licenses = [(name, os.path.join(LICENSE_DIR, name)) for name in LICENSES]
    headers = []
    total = 0
    for name in HEADERS:
        if total >= C_HEADERS_TARGET:
            break
        path = os.path.join(HEADER_DIR, name)
        headers.append((path, path))
        total += os.path.getsize(path)

    manifest = {
        "about": "Text corpora of the testbed's text tasks; made by scripts/make_testbed_corpus.py",
        "corpora": {},
    }
    os.makedirs(out_dir, exist_ok=True)
    for name, sources in (("licenses", licenses), ("c_headers", headers)):
        data, entries = build(sources)
        file_name = f"{name}.txt"
        with open(os.path.join(out_dir, file_name), "wb") as f:
            f.write(data)
        manifest["corpora"][name] = {
            "file": file_name,
            "bytes": len(data),
            "sha256": sha256(data),
            "separator": "each source is preceded by a line \"==> NAME <==\"",
            "sources": entries,
        }
    with open(os.path.join(out_dir, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    for name, corpus in manifest["corpora"].items():
        print(f"{name}: {corpus['bytes']} bytes from {len(corpus['sources'])} files")


def check(data_dir):
    with open(os.path.join(data_dir, "MANIFEST.json")) as f:
        manifest = json.load(f)
    bad = 0
    for name, corpus in manifest["corpora"].items():
        with open(os.path.join(data_dir, corpus["file"]), "rb") as f:
            data = f.read()
        if len(data) != corpus["bytes"] or sha256(data) != corpus["sha256"]:
            print(f"FAIL {name}: {corpus['file']} does not match MANIFEST.json")
            bad += 1
        else:
            print(f"ok {name}: {len(data)} bytes, sha256 {corpus['sha256']}")
    return 1 if bad else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DATA, help="output directory (default: testbed/data)")
    parser.add_argument("--check", action="store_true",
                        help="verify the committed corpora against MANIFEST.json")
    args = parser.parse_args()
    if args.check:
        sys.exit(check(args.out))
    generate(args.out)


if __name__ == "__main__":
    main()
