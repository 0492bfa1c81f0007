// Where a native batch decode step's time goes, phase by phase (decode_batch.cpp).
//
// The profile of a step says what to work on next: how much is GEMMs, attention, row work and
// waiting at barriers, each beside what the machine's probes say it could be
// (benchmarks/decode_phases.py). Each thread keeps its own sums and adds them to the model's
// totals once, when the step ends; a clock made without totals does nothing, so timing costs
// a branch per phase when off and a steady_clock read (~20 ns, ~250 a step at 12 layers) when on.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace latlab {

enum Phase : int {
  kEmbed,
  kNorm,      // residual adds and RMSNorms
  kQuantize,  // W8A8: GEMM inputs quantized per row
  kQkv,
  kAttention,  // RoPE, the new K and V written, attention over the paged cache
  kO,
  kGateUp,
  kSiluMul,
  kDown,
  kHead,  // the final norm and the logits
  kBarrier,
  kPhases
};
constexpr const char* kPhaseNames[kPhases] = {
    "embed", "norm", "quantize", "qkv", "attention", "o", "gate_up", "silu_mul", "down", "head",
    "barrier"};

using PhaseTotals = std::array<std::atomic<int64_t>, kPhases>;  // nanoseconds, all threads

class PhaseClock {
 public:
  explicit PhaseClock(PhaseTotals* totals) : totals_(totals), last_(totals ? now() : 0) {}
  PhaseClock(const PhaseClock&) = delete;
  PhaseClock& operator=(const PhaseClock&) = delete;
  ~PhaseClock() {
    if (totals_ == nullptr) return;
    for (int p = 0; p < kPhases; ++p) (*totals_)[p].fetch_add(spent_[p], std::memory_order_relaxed);
  }
  // The time since the last mark was spent in phase p.
  void mark(Phase p) {
    if (totals_ == nullptr) return;
    const int64_t t = now();
    spent_[p] += t - last_;
    last_ = t;
  }

 private:
  static int64_t now() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  PhaseTotals* totals_;
  int64_t last_;
  std::array<int64_t, kPhases> spent_{};
};

// An OpenMP barrier whose wait counts as such: phase `done` ends first. Called inside the
// step's parallel region (an orphaned barrier binds to it).
inline void sync(PhaseClock& clock, Phase done) {
  clock.mark(done);
#pragma omp barrier
  clock.mark(kBarrier);
}

}  // namespace latlab
