#!/usr/bin/env bash
# Installs everything premoe needs to build and test, on a fresh Debian 12
# machine: system libraries from apt, libtorch and the test references from
# PyPI into a project-local virtual environment (.venv). Idempotent: what is
# already there is skipped, so running it before every build costs seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git clang lld clang-format
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
  librocksdb-dev libfaiss-dev libopenblas0-pthread libomp-dev
  libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libpcre2-dev libutf8proc-dev libcpp-httplib-dev libxxhash-dev
  libclang-rt-14-dev libpng-dev prometheus-cpp-dev
  prometheus  # the metrics test scrapes router, worker and store with a real server
  openssl  # the TLS tests make their certificates with it
  curl     # the HTTP API's test reads the event stream with curl -N
  libgloo-dev  # headers only: c10d's ProcessGroupGloo.hpp includes them; libtorch has Gloo built in
)

# Pinned so that the reference outputs tests compare against do not drift.
PIP_PACKAGES=(
  torch==2.15.0 transformers==5.24.0 tokenizers==0.23.3 safetensors
  numpy matplotlib grpcio==1.85.3 grpcio-health-checking==1.85.1
  openai==3.63.0  # the HTTP API's tests use the official client
  # The Helm chart's check (scripts/check_helm.sh): Helm's Go SDK as a library
  # (no registry we reach ships the helm binary) and the Kubernetes API schemas.
  helm-python-sdk==0.2.2 kubernetes-validate==1.37.0
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=".venv/.premoe-pip-$(printf '%s\n' "${PIP_PACKAGES[@]}" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv (libtorch comes with torch)"
  .venv/bin/pip install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
  touch "$stamp"
fi
echo "setup: ok"
