// C ABI of the CUDA emulation's runtime state, exported from dilconv._C so that Python reads it
// with ctypes (dilconv/emu_traffic.py) without an op schema or pybind11. No torch headers here.
#define DILCONV_EMU 1
#include "kernels/platform.cuh"

#define DC_EXPORT extern "C" __attribute__((visibility("default")))

// Traffic counters (csrc/emu/emu_traffic.h): on/off, reset, and the JSON report. The returned
// string stays valid until the next call of dilconv_emu_traffic_report from any thread.
DC_EXPORT void dilconv_emu_traffic_enable(int on) { dc::emu::traffic_enable(on != 0); }
DC_EXPORT int dilconv_emu_traffic_enabled() { return dc::emu::traffic_enabled() ? 1 : 0; }
DC_EXPORT void dilconv_emu_traffic_reset() { dc::emu::traffic_reset(); }
DC_EXPORT const char* dilconv_emu_traffic_report() {
  static std::mutex m;
  static std::string last;
  std::lock_guard<std::mutex> lk(m);
  last = dc::emu::traffic_report_json();
  return last.c_str();
}
