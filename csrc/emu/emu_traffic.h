// Memory-traffic counters of the CUDA emulation (included by emulation.h users via platform.cuh).
//
// dc::load / dc::store record, when counting is on, (call site, per-lane sequence number,
// address, bytes) in the calling CUDA thread's log. A predicated-off lane may record 0 bytes at a
// site (traffic_record(log, loc, p, 0, ...)) to keep its per-site numbering aligned with the
// lanes that did access memory; such records touch no sector. A *warp request* is the k-th execution of one
// call site by the lanes of one warp (what one load/store instruction of a converged warp is on
// the GPU). At the end of each block the logs are grouped into requests and, for every request,
// the distinct 32-byte sectors are counted (what the memory system moves) together with the
// distinct bytes the lanes asked for. Sector efficiency = useful bytes / (32 * sectors), the
// quantity Nsight Compute reports as sectors-per-request for coalescing.
//
// Results accumulate per call site and per launch until reset. Off by default: when off, the
// accessor costs one relaxed atomic load. Switched on by DILCONV_EMU_TRAFFIC=1 in the environment
// (read at the first launch) or by dc::emu::traffic_enable(true) / the C functions in
// csrc/emu/emu_runtime.cpp (Python: dilconv.emu_traffic).
#pragma once
#include <cstdlib>
#include <map>
#include <source_location>
#include <unordered_map>

namespace dc::emu {

struct Access {
  const char* file;
  const char* function;
  uint32_t line, column;
  uint32_t seq;
  bool store;
  uint16_t bytes;
  uintptr_t addr;
};

struct SiteKey {
  const char* file;
  uint32_t line, column;
  bool operator==(const SiteKey& o) const { return file == o.file && line == o.line && column == o.column; }
};
struct SiteKeyHash {
  size_t operator()(const SiteKey& k) const {
    return std::hash<const void*>()(k.file) ^ (size_t(k.line) * 0x9E3779B97F4A7C15ull) ^ (size_t(k.column) << 17);
  }
};

struct TrafficLog {
  std::vector<Access> accesses;
  std::unordered_map<SiteKey, uint32_t, SiteKeyHash> seq;  // executions of each site so far
};

struct TrafficStats {
  uint64_t requests = 0, sectors = 0, useful_bytes = 0, bytes = 0;
  void add(const TrafficStats& o) {
    requests += o.requests;
    sectors += o.sectors;
    useful_bytes += o.useful_bytes;
    bytes += o.bytes;
  }
};

struct SiteStats {
  std::string function, location;
  bool store;
  TrafficStats s;
};

struct LaunchStats {
  dim3 grid, block;
  size_t dyn_smem;
  std::map<std::string, bool> functions;  // functions containing the launch's accessor calls
  TrafficStats load, store;
};

struct TrafficState {
  std::mutex mu;
  std::map<std::string, SiteStats> sites;  // key: location + function + kind
  std::vector<LaunchStats> launches;
  std::vector<TrafficLog> logs;  // current launch, one per CUDA thread
  LaunchStats* current = nullptr;
};
inline TrafficState& traffic_state() {
  static TrafficState s;
  return s;
}
inline std::atomic<bool>& traffic_flag() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("DILCONV_EMU_TRAFFIC");
    return e && *e && std::string(e) != "0";
  }()};
  return on;
}
inline void traffic_enable(bool on) { traffic_flag().store(on); }
inline bool traffic_enabled() { return traffic_flag().load(std::memory_order_relaxed); }
inline void traffic_reset() {
  auto& st = traffic_state();
  std::lock_guard<std::mutex> lk(st.mu);
  st.sites.clear();
  st.launches.clear();
}

template <typename Log>
inline void traffic_record(Log* log, const std::source_location& loc, const void* p, size_t bytes, bool store) {
  if (!log) return;  // accessor used outside a launch (host code): not device traffic
  uint32_t& n = log->seq[SiteKey{loc.file_name(), loc.line(), loc.column()}];
  log->accesses.push_back(Access{loc.file_name(), loc.function_name(), loc.line(), loc.column(), n++, store,
                                 uint16_t(bytes), reinterpret_cast<uintptr_t>(p)});
}

// Called with the block's mutex held by the thread that completes the block: all logs are stable.
inline void traffic_block_end(unsigned nthreads) {
  auto& st = traffic_state();
  struct Req {
    const Access* first;
    std::vector<std::pair<uintptr_t, uintptr_t>> ranges;  // [begin, end) byte ranges
  };
  // (warp, site, seq) -> request
  std::map<std::tuple<unsigned, const char*, uint32_t, uint32_t, uint32_t>, Req> reqs;
  for (unsigned t = 0; t < nthreads; ++t) {
    for (const Access& a : st.logs[t].accesses) {
      Req& r = reqs[{t / 32, a.file, a.line, a.column, a.seq}];
      r.first = &a;
      r.ranges.emplace_back(a.addr, a.addr + a.bytes);
    }
  }
  std::lock_guard<std::mutex> lk(st.mu);
  for (auto& [key, r] : reqs) {
    std::sort(r.ranges.begin(), r.ranges.end());
    TrafficStats s;
    s.requests = 1;
    uintptr_t cur_b = 0, cur_e = 0, last_sector = ~uintptr_t(0);
    for (auto [b, e] : r.ranges) {
      if (e == b) continue;  // a predicated-off lane (zero-byte record) touches no sector
      s.bytes += e - b;
      if (b >= cur_e) {
        s.useful_bytes += cur_e - cur_b;
        cur_b = b;
        cur_e = e;
      } else {
        cur_e = std::max(cur_e, e);
      }
      for (uintptr_t sec = b / 32; sec <= (e - 1) / 32; ++sec)
        if (sec != last_sector && (last_sector == ~uintptr_t(0) || sec > last_sector)) {
          ++s.sectors;
          last_sector = sec;
        }
    }
    s.useful_bytes += cur_e - cur_b;
    if (s.sectors == 0) continue;  // every lane predicated off: no memory request on the GPU
    const Access& a = *r.first;
    const std::string loc = std::string(a.file) + ":" + std::to_string(a.line) + ":" + std::to_string(a.column);
    SiteStats& site = st.sites[loc + "|" + a.function + (a.store ? "|store" : "|load")];
    site.function = a.function;
    site.location = loc;
    site.store = a.store;
    site.s.add(s);
    if (st.current) {
      st.current->functions[a.function] = true;
      (a.store ? st.current->store : st.current->load).add(s);
    }
  }
  for (unsigned t = 0; t < nthreads; ++t) {
    st.logs[t].accesses.clear();
    st.logs[t].seq.clear();
  }
}

inline void traffic_begin_launch(Block& b, std::vector<ThreadCtx>& threads) {
  if (!traffic_enabled()) return;
  auto& st = traffic_state();
  st.logs.assign(threads.size(), TrafficLog{});
  for (size_t t = 0; t < threads.size(); ++t) threads[t].traffic = &st.logs[t];
  {
    std::lock_guard<std::mutex> lk(st.mu);
    st.launches.push_back(LaunchStats{b.grid(), b.block_dim(), b.dyn_bytes(), {}, {}, {}});
    st.current = &st.launches.back();
  }
  const unsigned nt = unsigned(threads.size());
  b.on_block_end = [nt] { traffic_block_end(nt); };
}

inline void traffic_end_launch(Block&, bool) {
  auto& st = traffic_state();
  std::lock_guard<std::mutex> lk(st.mu);
  st.current = nullptr;
  st.logs.clear();
}

inline std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (static_cast<unsigned char>(c) < 0x20) o += ' ';
    else o += c;
  }
  return o;
}

// {"enabled": bool, "sites": [...], "launches": [...]}; every entry has requests, sectors,
// useful_bytes (distinct bytes asked for per request, summed) and bytes (all bytes asked for).
inline std::string traffic_report_json() {
  auto& st = traffic_state();
  std::lock_guard<std::mutex> lk(st.mu);
  auto stats = [](const TrafficStats& s) {
    return "\"requests\": " + std::to_string(s.requests) + ", \"sectors\": " + std::to_string(s.sectors) +
           ", \"useful_bytes\": " + std::to_string(s.useful_bytes) + ", \"bytes\": " + std::to_string(s.bytes);
  };
  std::string o = std::string("{\"enabled\": ") + (traffic_enabled() ? "true" : "false") + ", \"sites\": [";
  bool first = true;
  for (auto& [k, s] : st.sites) {
    o += (first ? "" : ", ");
    first = false;
    o += "{\"location\": \"" + json_escape(s.location) + "\", \"function\": \"" + json_escape(s.function) +
         "\", \"kind\": \"" + (s.store ? "store" : "load") + "\", " + stats(s.s) + "}";
  }
  o += "], \"launches\": [";
  first = true;
  for (auto& l : st.launches) {
    o += (first ? "" : ", ");
    first = false;
    o += "{\"grid\": [" + std::to_string(l.grid.x) + ", " + std::to_string(l.grid.y) + ", " + std::to_string(l.grid.z) +
         "], \"block\": [" + std::to_string(l.block.x) + ", " + std::to_string(l.block.y) + ", " +
         std::to_string(l.block.z) + "], \"dynamic_smem\": " + std::to_string(l.dyn_smem) + ", \"functions\": [";
    bool f1 = true;
    for (auto& [f, _] : l.functions) {
      o += (f1 ? "\"" : ", \"") + json_escape(f) + "\"";
      f1 = false;
    }
    o += "], \"load\": {" + stats(l.load) + "}, \"store\": {" + stats(l.store) + "}}";
  }
  return o + "]}";
}

}  // namespace dc::emu
