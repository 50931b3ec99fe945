// What every benchmark prints beside its figures: the machine and how busy it
// was (these machines are shared, and load moves the figures).
#pragma once

#include <fstream>
#include <string>
#include <thread>

namespace premoe::bench {

// The 1-minute load average (/proc/loadavg).
inline std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string first;
  in >> first;
  return first;
}

// "MODEL NAME, N CPUs" (/proc/cpuinfo, as lscpu names it).
inline std::string MachineName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model = "unknown CPU";
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  return model + ", " + std::to_string(std::thread::hardware_concurrency()) + " CPUs";
}

}  // namespace premoe::bench
