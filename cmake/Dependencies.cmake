# Every third-party dependency is found here, once. Components link what they
# need PRIVATE (DESIGN.md §2); scripts/setup.sh installs all of it.

find_package(absl REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(spdlog REQUIRED)
find_package(CLI11 REQUIRED)
find_package(Threads REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
# Debian builds cpp-httplib as a library with OpenSSL, zlib and brotli; its
# pkg-config flags carry the matching defines (they change the classes' layout).
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)

# libtorch comes from the PyTorch wheel in the project's .venv (DESIGN.md §5).
set(PREMOE_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH
    "Python of the virtual environment that holds torch (scripts/setup.sh).")
if(NOT Torch_DIR AND EXISTS "${PREMOE_PYTHON}")
  execute_process(
    COMMAND "${PREMOE_PYTHON}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _torch_rc ERROR_QUIET)
  if(_torch_rc EQUAL 0)
    list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
  endif()
endif()
if(NOT PREMOE_WITH_CUDA STREQUAL "OFF" AND EXISTS /usr/local/cuda/bin/nvcc
   AND NOT CMAKE_CUDA_COMPILER)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
# Torch's CUDA config otherwise compiles and runs a probe for local GPUs, which
# fails without one; premoe targets Ampere/Hopper/Blackwell data-centre GPUs.
if(NOT TORCH_CUDA_ARCH_LIST)
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0;10.0" CACHE STRING "CUDA architectures for device code")
endif()
set(CMAKE_CUDA_STANDARD 17)
find_package(Torch REQUIRED)
message(STATUS "premoe: libtorch ${Torch_VERSION} from ${Torch_DIR}")

# libtorch_cpu carries its own BLAS (MKL in the wheel) and exports sgemm_, as
# do Debian's libblas.so.3 (OpenBLAS), which FAISS pulls in. The dynamic linker
# binds every sgemm_ call to the first library that defines it, in the
# executable's NEEDED order, and that was libblas: torch's matmuls ran on
# OpenBLAS's own spinning thread pool, beside OpenMP's, at a sixth of the speed
# (a training step took 1.1 s instead of 0.18 on 2 cores). Every executable
# that uses libtorch therefore names libtorch_cpu first. model::GetBuildInfo().blas_library
# reports the binding and tests/model/build_info_test checks it. (Link
# options come before the objects and libraries on the command line; premoe
# model's consumers get it through INTERFACE_LINK_OPTIONS.)
set(PREMOE_TORCH_FIRST_LINK_OPTION "")
if(TARGET torch_cpu)
  get_target_property(_torch_cpu_lib torch_cpu IMPORTED_LOCATION)
  if(NOT _torch_cpu_lib)
    get_target_property(_torch_cpu_lib torch_cpu IMPORTED_LOCATION_RELEASE)
  endif()
  if(_torch_cpu_lib)
    set(PREMOE_TORCH_FIRST_LINK_OPTION
        "SHELL:-Wl,--push-state,--no-as-needed ${_torch_cpu_lib} -Wl,--pop-state")
  endif()
endif()

# The torch wheel brings its own CUDA runtime, cuDNN and NCCL under
# site-packages/nvidia/. Link and run against those, not the toolkit's copies in
# /usr/local/cuda/lib: that NCCL is older than the one torch was built with, and
# two libcudart.so.13 of different minor versions must not meet in one process.
get_filename_component(_torch_site "${Torch_DIR}/../../../.." ABSOLUTE)
file(GLOB PREMOE_TORCH_RUNTIME_DIRS LIST_DIRECTORIES true "${_torch_site}/nvidia/*/lib")
if(PREMOE_TORCH_RUNTIME_DIRS)
  foreach(_lib cudart nvrtc)
    file(GLOB _pip_lib "${_torch_site}/nvidia/cu*/lib/lib${_lib}.so.*[0-9]")
    list(FILTER _pip_lib EXCLUDE REGEX "builtins")
    if(TARGET CUDA::${_lib} AND _pip_lib)
      list(GET _pip_lib 0 _pip_lib)
      set_target_properties(CUDA::${_lib} PROPERTIES IMPORTED_LOCATION "${_pip_lib}")
    endif()
  endforeach()
  foreach(_dir ${PREMOE_TORCH_RUNTIME_DIRS})
    add_link_options("LINKER:-rpath-link,${_dir}")
  endforeach()
  list(APPEND CMAKE_BUILD_RPATH ${PREMOE_TORCH_RUNTIME_DIRS})
endif()
string(REPLACE "/usr/local/cuda/lib/libcudart.so" "CUDA::cudart" TORCH_LIBRARIES "${TORCH_LIBRARIES}")
string(REPLACE "/usr/local/cuda/lib/libnvrtc.so" "CUDA::nvrtc" TORCH_LIBRARIES "${TORCH_LIBRARIES}")

# CUDA-enabled libtorch defines the torch_cuda target (and c10d's
# ProcessGroupNCCL); the CPU-only build does not.
set(_torch_has_cuda OFF)
if(TARGET torch_cuda OR CUDA_FOUND OR CUDAToolkit_FOUND)
  set(_torch_has_cuda ON)
endif()
if(PREMOE_WITH_CUDA STREQUAL "AUTO")
  set(PREMOE_CUDA_ENABLED ${_torch_has_cuda})
elseif(PREMOE_WITH_CUDA)
  if(NOT _torch_has_cuda)
    message(FATAL_ERROR "PREMOE_WITH_CUDA=ON but libtorch at ${Torch_DIR} has no CUDA")
  endif()
  set(PREMOE_CUDA_ENABLED ON)
else()
  set(PREMOE_CUDA_ENABLED OFF)
endif()
message(STATUS "premoe: CUDA/NCCL paths ${PREMOE_CUDA_ENABLED}")

if(PREMOE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
if(PREMOE_BUILD_BENCH)
  find_package(benchmark REQUIRED)
endif()

# The pattern store (proto/, store/): protobuf + gRPC for the wire, RocksDB for
# the records, FAISS for the match-embedding index. Debian ships CMake configs
# for gRPC (with the gRPC::grpc_cpp_plugin executable target), RocksDB and
# FAISS. FAISS's config needs OpenMP found first.
find_package(Protobuf REQUIRED)
# Torch's Caffe2 config (found above) defines protobuf::libprotobuf as an
# alias of an empty dummy target, which then hides the real one (and gRPC's
# targets link it). Link the real library through this variable instead.
set(PREMOE_PROTOBUF_LIBRARIES ${Protobuf_LIBRARIES})
set(PREMOE_PROTOC ${Protobuf_PROTOC_EXECUTABLE})
find_package(gRPC CONFIG REQUIRED)
if(TARGET gRPC::grpc_cpp_plugin)
  get_target_property(PREMOE_GRPC_CPP_PLUGIN gRPC::grpc_cpp_plugin IMPORTED_LOCATION_NONE)
endif()
if(NOT PREMOE_GRPC_CPP_PLUGIN OR NOT EXISTS "${PREMOE_GRPC_CPP_PLUGIN}")
  find_program(PREMOE_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)
endif()
find_package(RocksDB CONFIG REQUIRED)
find_package(OpenMP REQUIRED)
find_package(faiss CONFIG REQUIRED)
# Metrics: prometheus-cpp's core (registry, text format).
find_package(prometheus-cpp CONFIG REQUIRED)
message(STATUS "premoe: protobuf ${Protobuf_VERSION}, gRPC ${gRPC_VERSION}, "
               "RocksDB ${RocksDB_VERSION}, FAISS ${faiss_VERSION}")
