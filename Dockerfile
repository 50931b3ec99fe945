# syntax=docker/dockerfile:1
# premoe's image: the `premoe` binary, the shared libraries it loads, and the
# testbed model at /models/testbed, so that
#   docker build -t premoe .
#   docker run --rm -p 50051:50051 premoe            # store + router + worker, on CPU
# works out of the box. The Helm chart (helm/premoe) runs the same image once
# per role. docs/deploy.md has the details.
#
# Two stages on Debian 12 (bookworm):
#  - build:   scripts/setup.sh (the same script developers and CI run) installs
#             the Debian -dev packages and creates .venv with the torch wheel
#             from PyPI (libtorch, CUDA-enabled); then CMake builds `premoe`.
#  - runtime: debian:12-slim with the matching runtime Debian libraries, the
#             binary, libtorch and the CUDA libraries of the torch wheel.
#
# Uncertain, and why (this file could not be built where it was written):
#  - The CUDA toolkit. The torch wheel is built with CUDA, and its CMake config
#    (Caffe2Config.cmake) stops with "Your installed Caffe2 version uses CUDA
#    but I cannot find the CUDA libraries" unless a CUDA toolkit is found at
#    configure time. Debian 12 has no CUDA 13 toolkit (non-free has 11.8), so
#    the build stage copies /usr/local/cuda-13.0 out of NVIDIA's devel image
#    (CUDA_DEVEL_IMAGE below; Ubuntu 22.04 flavour, whose glibc 2.35 binaries
#    run on Debian 12's glibc 2.36). The developers' machines have the same
#    toolkit, 13.0, at /usr/local/cuda. Only the build stage uses it: at run
#    time premoe loads the CUDA runtime, cuBLAS, cuDNN and NCCL that came with
#    the torch wheel (site-packages/nvidia/*), as it does on those machines.
#    An untried alternative that stays on PyPI: pip install
#    "cuda-toolkit[nvcc,cudart,...]" into .venv and point CUDAToolkit_ROOT and
#    CMAKE_CUDA_COMPILER at site-packages/nvidia/cu13.
#  - Which CUDA libraries are needed at run time. All of site-packages/nvidia/*/lib
#    is copied (about 3 GB): libtorch_cuda dlopens cuDNN's sub-libraries,
#    nvrtc-builtins and others that `ldd` does not list, so pruning is left
#    for when it can be tested on a GPU.
#  - The GPU driver (libcuda.so.1) is not in the image: on a GPU node the
#    NVIDIA container toolkit mounts it (NVIDIA_DRIVER_CAPABILITIES below).
#    Without a GPU the same binary runs on CPU (--device cpu).

ARG CUDA_DEVEL_IMAGE=nvidia/cuda:13.0.0-devel-ubuntu22.04

FROM ${CUDA_DEVEL_IMAGE} AS cuda

# ---------------------------------------------------------------------------
FROM debian:12 AS build
ARG JOBS=""
ENV DEBIAN_FRONTEND=noninteractive
# setup.sh needs Python (for .venv) and sudo-less root, which a build has.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=cuda /usr/local/cuda-13.0 /usr/local/cuda-13.0
RUN ln -s /usr/local/cuda-13.0 /usr/local/cuda
# As on the developers' machines.
ENV PATH=/usr/local/cuda/bin:${PATH} \
    CUDA_HOME=/usr/local/cuda

WORKDIR /src
# setup.sh alone first, so that its (slow) layer is reused while only sources change.
COPY scripts/setup.sh scripts/setup.sh
RUN scripts/setup.sh && rm -rf /root/.cache/pip /var/lib/apt/lists/*
# The developers' toolkit has nccl.h in /usr/local/cuda/include; NVIDIA's devel
# image keeps NCCL elsewhere. Use the NCCL of the torch wheel, the one c10d was
# built with (no premoe source includes nccl.h yet; this is for the NCCL path).
RUN for h in /src/.venv/lib/python3*/site-packages/nvidia/nccl/include/nccl*.h; do \
      [ -e "/usr/local/cuda/include/$(basename "$h")" ] || ln -s "$h" /usr/local/cuda/include/; \
    done
COPY . .
RUN --mount=type=cache,target=/root/.cache/ccache \
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
          -DPREMOE_BUILD_TESTS=OFF -DPREMOE_BUILD_BENCH=OFF \
 && cmake --build build --target premoe -j"${JOBS:-$(nproc)}"

# What the runtime stage takes, laid out as in site-packages so that the
# RPATHs inside libtorch ($ORIGIN/../../nvidia/*/lib) still resolve.
RUN set -eux; \
    sp=$(echo /src/.venv/lib/python3*/site-packages); \
    mkdir -p /staging/bin /staging/site-packages/torch /staging/site-packages/nvidia; \
    install -m 0755 build/cli/premoe /staging/bin/premoe; \
    strip --strip-debug /staging/bin/premoe; \
    cp -a "$sp/torch/lib" /staging/site-packages/torch/lib; \
    rm -f /staging/site-packages/torch/lib/libtorch_python.so; \
    for d in "$sp"/nvidia/*/lib; do \
      n=$(basename "$(dirname "$d")"); \
      mkdir -p "/staging/site-packages/nvidia/$n"; \
      cp -a "$d" "/staging/site-packages/nvidia/$n/lib"; \
    done; \
    (cd /staging/site-packages && find . -name '*.so*' -printf '%h\n' \
       | sed 's|^\.|/opt/premoe/site-packages|' | sort -u) \
      > /staging/ld.so.conf; \
    cat /staging/ld.so.conf

# ---------------------------------------------------------------------------
FROM debian:12-slim AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# The runtime packages of setup.sh's -dev packages (what the binary links):
#   libabsl-dev -> libabsl20220623      libprotobuf-dev -> libprotobuf32
#   libgrpc++-dev -> libgrpc++1.51 (+ libgrpc29)   librocksdb-dev -> librocksdb7.8
#   libfaiss-dev (static libfaiss.a) -> BLAS/LAPACK: libopenblas0-pthread
#   libomp-dev -> libgomp1 (gcc's OpenMP is the one linked; libomp5 is not needed)
#   libspdlog-dev -> libspdlog1.10      libfmt-dev -> libfmt9
#   libpcre2-dev -> libpcre2-8-0        libutf8proc-dev -> libutf8proc2
#   libcpp-httplib-dev -> libcpp-httplib0.11   libxxhash-dev -> libxxhash0
#   libpng-dev -> libpng16-16           prometheus-cpp-dev -> libprometheus-cpp-core1.0
# Header-only or build-only: CLI11, nlohmann-json, libgloo-dev (libtorch carries
# Gloo), gtest/gmock, benchmark, clang's runtime libraries.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      libabsl20220623 libprotobuf32 libgrpc++1.51 libgrpc29 librocksdb7.8 \
      libopenblas0-pthread libgomp1 libspdlog1.10 libfmt9 libpcre2-8-0 libutf8proc2 \
      libcpp-httplib0.11 libxxhash0 libpng16-16 libprometheus-cpp-core1.0 \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /staging/site-packages /opt/premoe/site-packages
COPY --from=build /staging/bin/premoe /usr/local/bin/premoe
# The binary's own RUNPATH names the build stage's .venv, which is not here: the
# dynamic loader finds libtorch and the wheel's CUDA libraries through its cache
# instead (every directory under /opt/premoe/site-packages that holds a library;
# the file sorts before x86_64-linux-gnu.conf, so torch's own libgomp wins, as
# it does in .venv). LD_LIBRARY_PATH is left free for the user.
COPY --from=build /staging/ld.so.conf /etc/ld.so.conf.d/premoe.conf
RUN ldconfig && ldd /usr/local/bin/premoe | (! grep "not found")
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/tmp

COPY testbed/model /models/testbed

RUN groupadd --system --gid 10001 premoe \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin premoe \
 && mkdir -p /var/lib/premoe/store \
 && chown 10001:10001 /var/lib/premoe/store
USER 10001:10001

# router (premoe.v1.Inference), store (premoe.v1.PatternStore), worker
# (premoe.v1.Worker), the OpenAI HTTP API (and the router's /metrics), and
# --metrics-listen's conventional port
EXPOSE 50051 50052 50053 8000 9400
ENTRYPOINT ["premoe"]
# Out of the box: every role in one process, the testbed model, on CPU.
CMD ["serve", "--listen", "0.0.0.0:50051", "--http-listen", "0.0.0.0:8000", \
     "--served-model-name", "testbed", "--model", "/models/testbed", \
     "--store-dir", "/var/lib/premoe/store"]
