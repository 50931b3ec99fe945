#include <cstdio>

#include "premoe/model/build_info.h"

int main() {
  auto info = premoe::model::GetBuildInfo();
  std::printf("premoe %s torch %s cuda %d devices %d\n", info.premoe_version.c_str(),
              info.torch_version.c_str(), info.cuda_compiled, info.cuda_devices);
}
