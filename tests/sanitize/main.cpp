// Sanitizer matrix driver: `harness` runs every DC_SANITIZE_CASE, `harness NAME...` the named
// ones, `harness --list` lists them, `harness --broken NAME` runs one deliberately broken kernel.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>

#include "sanitize/harness.h"

int main(int argc, char** argv) {
  if (argc == 2 && !std::strcmp(argv[1], "--list")) {
    for (auto& c : dcs::cases()) std::printf("%s\n", c.name);
    return 0;
  }
  const bool broken = argc == 3 && !std::strcmp(argv[1], "--broken");
  auto& reg = broken ? dcs::broken_cases() : dcs::cases();
  int failed = 0, ran = 0;
  for (auto& c : reg) {
    bool want = argc == 1;
    for (int i = broken ? 2 : 1; i < argc; ++i) want |= !std::strcmp(argv[i], c.name);
    if (!want) continue;
    ++ran;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      c.fn();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("ok   %-40s %.2fs\n", c.name, s);
    } catch (const std::exception& e) {
      std::printf("FAIL %-40s %s\n", c.name, e.what());
      ++failed;
    }
    std::fflush(stdout);
  }
  if (ran == 0) {
    std::printf("no case matched\n");
    return 2;
  }
  std::printf("%d case(s), %d failed\n", ran, failed);
  return failed ? 1 : 0;
}
