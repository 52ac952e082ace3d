// Native CPU kernels of bnn_jax.kernels, registered with XLA as FFI custom calls.
//
// Layouts are those of kernels/packing.py: a plane is uint32 words, element i of the packed axis
// at bit i % 32 of word i / 32, zero pad bits. Activations are (M, Kw) planes packed along K,
// weights (Kw, N) planes packed along K (so one weight row of N words is contiguous).
//
// Every integer product is P - 2 Q (kernels/bitops.py): Q = popcount(m & s), s the XOR of the
// sign planes, m the AND of the masks; P = popcount(m), or K when neither operand has a mask.
//
// Each kernel has an AVX2 body and a portable scalar body; the AVX2 one is chosen at run time
// when the CPU has AVX2 (BNN_JAX_NATIVE_ISA=scalar forces the scalar one). Work is split over
// blocks of output columns (and row blocks) run by a thread pool sized from the CPU affinity
// mask; each output element is computed by exactly one thread in a fixed order, so results do
// not depend on the thread count.

#include <immintrin.h>
#include <sched.h>
#include <stdint.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// ------------------------------------------------------------------------------- thread pool

namespace {

int machine_threads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// A persistent pool: `run(n, fn)` calls fn(i) for i in [0, n) on the workers and the calling
// thread (tasks handed out through an atomic counter) and returns as soon as every task is done;
// a worker that wakes late finds no task left and is not waited for (the job it looks at lives
// on the heap until its last reader drops it). Workers spin briefly for the next job (kernels
// are called back to back) before they sleep.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();  // never destroyed: workers may outlive static teardown
    return *pool;
  }

  int threads() const { return threads_.load(); }

  void set_threads(int n) {
    std::lock_guard<std::mutex> busy(run_mu_);
    n = std::max(1, n);
    while (static_cast<int>(workers_.size()) < n - 1) {
      workers_.emplace_back([this, id = static_cast<int>(workers_.size()) + 1] { loop(id); });
      workers_.back().detach();
    }
    threads_.store(n);
  }

  void run(int64_t n, const std::function<void(int64_t)>& fn) {
    int nt = threads();
    // Nested or concurrent calls (XLA may run two custom calls at once) run inline.
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (nt <= 1 || n <= 1 || !busy.owns_lock()) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    job->active = static_cast<int>(std::min<int64_t>(nt, n));
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = job;
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    job->work();
    while (job->done.load(std::memory_order_acquire) != n) _mm_pause();
    std::lock_guard<std::mutex> lk(mu_);
    job_.reset();
  }

 private:
  struct Job {
    const std::function<void(int64_t)>* fn = nullptr;
    int64_t n = 0;
    int active = 0;
    std::atomic<int64_t> next{0}, done{0};
    void work() {
      for (int64_t i; (i = next.fetch_add(1)) < n;) {
        (*fn)(i);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };

  Pool() { set_threads(initial_threads()); }

  static int initial_threads() {
    if (const char* env = std::getenv("BNN_JAX_NUM_THREADS")) {
      int n = std::atoi(env);
      if (n > 0) return n;
    }
    return machine_threads();
  }

  void loop(int id) {
    uint64_t seen = generation_.load();
    for (;;) {
      // Spin ~0.2 ms for the next job, then sleep until one is posted.
      auto t0 = std::chrono::steady_clock::now();
      while (generation_.load(std::memory_order_acquire) == seen) {
        _mm_pause();
        if (std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(200)) {
          std::unique_lock<std::mutex> lk(mu_);
          cv_.wait(lk, [&] { return generation_.load() != seen; });
        }
      }
      std::shared_ptr<Job> job;
      {
        std::lock_guard<std::mutex> lk(mu_);
        seen = generation_.load();
        if (job_ && id < job_->active) job = job_;
      }
      if (job) job->work();
    }
  }

  std::atomic<int> threads_{1};
  std::vector<std::thread> workers_;
  std::mutex run_mu_, mu_;
  std::condition_variable cv_;
  std::atomic<uint64_t> generation_{0};
  std::shared_ptr<Job> job_;
};

// 2: AVX-512 with VPOPCNTDQ, 1: AVX2, 0: scalar. The CPU's best level, capped by
// BNN_JAX_NATIVE_ISA=avx2|scalar at start and by bnn_set_isa() later (tests run every body).
int cpu_level() {
  static const int level = [] {
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
    bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                  __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vpopcntdq");
    return avx512 ? 2 : (avx2 ? 1 : 0);
  }();
  return level;
}

std::atomic<int> isa_cap{[] {
  const char* env = std::getenv("BNN_JAX_NATIVE_ISA");
  std::string cap = env ? env : "";
  return cap == "scalar" ? 0 : (cap == "avx2" ? 1 : 2);
}()};

int isa_level() { return std::min(cpu_level(), isa_cap.load(std::memory_order_relaxed)); }

bool use_avx2() { return isa_level() >= 1; }
bool use_avx512() { return isa_level() >= 2; }

inline int popc32(uint32_t x) { return __builtin_popcount(x); }

// ------------------------------------------------------------------------------- XNOR GEMM

// Planes of one operand pair; null pointers are absent planes.
struct GemmArgs {
  const uint32_t *as, *am, *bs, *bm;
  int64_t m, kw, n, length;
  int32_t* out;   // (m, n), row stride n
  int64_t ldb;    // row stride of the b planes (n, or a packed panel's width)
};

// Word terms for one (row word a, column word b): s (sign XOR) and m (mask AND).
template <bool AS, bool AM, bool BS, bool BM>
inline void terms(uint32_t as, uint32_t am, uint32_t bs, uint32_t bm, uint32_t* s, uint32_t* m) {
  constexpr bool HAS_M = AM || BM;
  uint32_t mm = HAS_M ? ((AM ? am : ~0u) & (BM ? bm : ~0u)) : ~0u;
  *m = mm;
  *s = ((AS ? as : 0u) ^ (BS ? bs : 0u)) & mm;
}

// Scalar body for output rows [r0, r1) and columns [c0, c1).
template <bool AS, bool AM, bool BS, bool BM>
void gemm_scalar(const GemmArgs& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  constexpr bool HAS_Q = AS || BS, HAS_P = AM || BM;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = c0; c < c1; ++c) {
      int32_t q = 0, p = 0;
      for (int64_t k = 0; k < g.kw; ++k) {
        uint32_t s, m;
        terms<AS, AM, BS, BM>(AS ? g.as[r * g.kw + k] : 0, AM ? g.am[r * g.kw + k] : 0,
                              BS ? g.bs[k * g.ldb + c] : 0, BM ? g.bm[k * g.ldb + c] : 0, &s, &m);
        if (HAS_Q) q += popc32(s);
        if (HAS_P) p += popc32(m);
      }
      int32_t pp = HAS_P ? p : static_cast<int32_t>(g.length);
      g.out[r * g.n + c] = HAS_Q ? pp - 2 * q : pp;
    }
  }
}

#define BNN_AVX2 __attribute__((target("avx2,popcnt")))

// Per-byte popcount of a 256-bit vector (the vpshufb nibble lookup).
BNN_AVX2 inline __m256i popcnt8(__m256i x, __m256i lut, __m256i low) {
  __m256i lo = _mm256_and_si256(x, low);
  __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

// Sum of the 4 byte counts of each 32-bit lane.
BNN_AVX2 inline __m256i widen8(__m256i acc8) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(acc8, _mm256_set1_epi8(1)),
                           _mm256_set1_epi16(1));
}

// One MR x (8*NR) register tile: rows r0.., columns c0.. (all inside the matrix). Byte counters
// take at most 31 words (8 bits per byte per word: 31 * 8 = 248 < 256) before they are widened.
template <bool AS, bool AM, bool BS, bool BM, int MR, int NR>
BNN_AVX2 void gemm_tile(const GemmArgs& g, int64_t r0, int64_t c0) {
  constexpr bool HAS_Q = AS || BS, HAS_P = AM || BM;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                       1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  __m256i q32[MR][NR], p32[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NR; ++v) q32[i][v] = p32[i][v] = _mm256_setzero_si256();
  for (int64_t k0 = 0; k0 < g.kw; k0 += 31) {
    int64_t k1 = std::min<int64_t>(g.kw, k0 + 31);
    __m256i q8[MR][NR], p8[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NR; ++v) q8[i][v] = p8[i][v] = _mm256_setzero_si256();
    for (int64_t k = k0; k < k1; ++k) {
      __m256i bs[NR], bm[NR];
      for (int v = 0; v < NR; ++v) {
        if (BS) bs[v] = _mm256_loadu_si256((const __m256i*)(g.bs + k * g.ldb + c0 + 8 * v));
        if (BM) bm[v] = _mm256_loadu_si256((const __m256i*)(g.bm + k * g.ldb + c0 + 8 * v));
      }
      for (int i = 0; i < MR; ++i) {
        const int64_t ai = (r0 + i) * g.kw + k;
        __m256i as = AS ? _mm256_set1_epi32(static_cast<int>(g.as[ai])) : _mm256_setzero_si256();
        __m256i am = AM ? _mm256_set1_epi32(static_cast<int>(g.am[ai])) : _mm256_setzero_si256();
        for (int v = 0; v < NR; ++v) {
          __m256i m;
          if (AM && BM) m = _mm256_and_si256(am, bm[v]);
          else if (AM) m = am;
          else if (BM) m = bm[v];
          __m256i s;
          if (AS && BS) s = _mm256_xor_si256(as, bs[v]);
          else if (AS) s = as;
          else s = BS ? bs[v] : _mm256_setzero_si256();
          if (HAS_P) {
            s = _mm256_and_si256(s, m);
            p8[i][v] = _mm256_add_epi8(p8[i][v], popcnt8(m, lut, low));
          }
          if (HAS_Q) q8[i][v] = _mm256_add_epi8(q8[i][v], popcnt8(s, lut, low));
        }
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NR; ++v) {
        if (HAS_Q) q32[i][v] = _mm256_add_epi32(q32[i][v], widen8(q8[i][v]));
        if (HAS_P) p32[i][v] = _mm256_add_epi32(p32[i][v], widen8(p8[i][v]));
      }
  }
  const __m256i kk = _mm256_set1_epi32(static_cast<int>(g.length));
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NR; ++v) {
      __m256i pp = HAS_P ? p32[i][v] : kk;
      __m256i res = HAS_Q ? _mm256_sub_epi32(pp, _mm256_slli_epi32(q32[i][v], 1)) : pp;
      _mm256_storeu_si256((__m256i*)(g.out + (r0 + i) * g.n + c0 + 8 * v), res);
    }
}

// Rows [r0, r1) x columns [c0, c1) with the largest tiles that fit, scalar for the column tail.
template <bool AS, bool AM, bool BS, bool BM>
BNN_AVX2 void gemm_block_avx2(const GemmArgs& g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  constexpr bool MASKED = AM || BM;
  constexpr int MR = MASKED ? 2 : 4;  // masked pairs keep two counters per output
  int64_t cv = c0 + (c1 - c0) / 8 * 8;  // end of the full 8-column vectors
  for (int64_t c = c0; c < cv;) {
    int nr = (cv - c >= 16) ? 2 : 1;
    int64_t r = r0;
    for (; r + MR <= r1; r += MR) {
      if (nr == 2) gemm_tile<AS, AM, BS, BM, MR, 2>(g, r, c);
      else gemm_tile<AS, AM, BS, BM, MR, 1>(g, r, c);
    }
    for (; r < r1; ++r) {
      if (nr == 2) gemm_tile<AS, AM, BS, BM, 1, 2>(g, r, c);
      else gemm_tile<AS, AM, BS, BM, 1, 1>(g, r, c);
    }
    c += 8 * nr;
  }
  if (cv < c1) gemm_scalar<AS, AM, BS, BM>(g, r0, r1, cv, c1);
}


#define BNN_AVX512 __attribute__((target("avx512f,avx512bw,avx512vpopcntdq,avx2,popcnt")))

// AVX-512 tile: MR rows x NR vectors of 16 columns from c0; the last vector loads and stores
// only the columns in `tail` (a lane mask), so any column count needs no scalar tail.
template <bool AS, bool AM, bool BS, bool BM, int MR, int NR>
BNN_AVX512 void gemm_tile512(const GemmArgs& g, int64_t r0, int64_t c0, __mmask16 tail) {
  constexpr bool HAS_Q = AS || BS, HAS_P = AM || BM;
  __m512i q[MR][NR], p[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NR; ++v) q[i][v] = p[i][v] = _mm512_setzero_si512();
  for (int64_t k = 0; k < g.kw; ++k) {
    __m512i bs[NR], bm[NR];
    for (int v = 0; v < NR; ++v) {
      __mmask16 lanes = v == NR - 1 ? tail : static_cast<__mmask16>(0xffff);
      if (BS) bs[v] = _mm512_maskz_loadu_epi32(lanes, g.bs + k * g.ldb + c0 + 16 * v);
      if (BM) bm[v] = _mm512_maskz_loadu_epi32(lanes, g.bm + k * g.ldb + c0 + 16 * v);
    }
    for (int i = 0; i < MR; ++i) {
      const int64_t ai = (r0 + i) * g.kw + k;
      __m512i as = AS ? _mm512_set1_epi32(static_cast<int>(g.as[ai])) : _mm512_setzero_si512();
      __m512i am = AM ? _mm512_set1_epi32(static_cast<int>(g.am[ai])) : _mm512_setzero_si512();
      for (int v = 0; v < NR; ++v) {
        __m512i m;
        if (AM && BM) m = _mm512_and_si512(am, bm[v]);
        else if (AM) m = am;
        else if (BM) m = bm[v];
        __m512i s;
        if (AS && BS) s = _mm512_xor_si512(as, bs[v]);
        else if (AS) s = as;
        else s = BS ? bs[v] : _mm512_setzero_si512();
        if (HAS_P) {
          s = _mm512_and_si512(s, m);
          p[i][v] = _mm512_add_epi32(p[i][v], _mm512_popcnt_epi32(m));
        }
        if (HAS_Q) q[i][v] = _mm512_add_epi32(q[i][v], _mm512_popcnt_epi32(s));
      }
    }
  }
  const __m512i kk = _mm512_set1_epi32(static_cast<int>(g.length));
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NR; ++v) {
      __m512i pp = HAS_P ? p[i][v] : kk;
      __m512i res = HAS_Q ? _mm512_sub_epi32(pp, _mm512_slli_epi32(q[i][v], 1)) : pp;
      __mmask16 lanes = v == NR - 1 ? tail : static_cast<__mmask16>(0xffff);
      _mm512_mask_storeu_epi32(g.out + (r0 + i) * g.n + c0 + 16 * v, lanes, res);
    }
}

template <bool AS, bool AM, bool BS, bool BM, int MR>
BNN_AVX512 void gemm_rows512(const GemmArgs& g, int64_t r, int64_t c0, int64_t c1) {
  int64_t c = c0;
  for (; c + 64 <= c1; c += 64) gemm_tile512<AS, AM, BS, BM, MR, 4>(g, r, c, 0xffff);
  for (; c < c1; c += 16) {
    int64_t left = std::min<int64_t>(16, c1 - c);
    __mmask16 tail = static_cast<__mmask16>((1u << left) - 1);
    gemm_tile512<AS, AM, BS, BM, MR, 1>(g, r, c, tail);
  }
}

template <bool AS, bool AM, bool BS, bool BM>
BNN_AVX512 void gemm_block_avx512(const GemmArgs& g, int64_t r0, int64_t r1, int64_t c0,
                                  int64_t c1) {
  constexpr bool MASKED = AM || BM;
  constexpr int MR = MASKED ? 2 : 4;
  int64_t r = r0;
  for (; r + MR <= r1; r += MR) gemm_rows512<AS, AM, BS, BM, MR>(g, r, c0, c1);
  for (; r < r1; ++r) gemm_rows512<AS, AM, BS, BM, 1>(g, r, c0, c1);
}

// Column panels small enough that a panel of B stays in L2 while every row block streams by.
template <bool AS, bool AM, bool BS, bool BM>
void gemm_run(const GemmArgs& g) {
  const int64_t planes = (BS ? 1 : 0) + (BM ? 1 : 0);
  int64_t panel = std::max<int64_t>(16, (256 * 1024) / std::max<int64_t>(1, 4 * g.kw * planes));
  panel = std::min<int64_t>(panel, 256) / 16 * 16;
  int64_t n_panels = (g.n + panel - 1) / panel;
  const int threads = Pool::get().threads();
  // Enough tasks to spread over every thread: split rows too when there are few panels.
  int64_t row_block = g.m;
  if (n_panels < 4 * threads && g.m > 4) {
    int64_t splits = std::min<int64_t>((4 * threads + n_panels - 1) / n_panels, (g.m + 3) / 4);
    row_block = ((g.m + splits - 1) / splits + 3) / 4 * 4;
  }
  // At most 128 rows per task: a task's rows of a (with its panel of b) stay in L2.
  row_block = std::min<int64_t>(row_block, 128);
  int64_t n_rows = (g.m + row_block - 1) / row_block;
  const int level = isa_level();
  auto task = [&](int64_t t) {
    int64_t p = t / n_rows, rb = t % n_rows;
    int64_t c0 = p * panel, c1 = std::min(g.n, c0 + panel);
    int64_t r0 = rb * row_block, r1 = std::min(g.m, r0 + row_block);
    GemmArgs gp = g;
    // With many rows the panel of b is read once per 4-row tile: copy it to a contiguous
    // buffer first. In place its rows are n words apart, and a stride of a multiple of 4 KiB
    // maps every row to the same L1 sets.
    thread_local std::vector<uint32_t> buf;
    if (r1 - r0 >= 16 && level >= 1) {
      const int64_t w = c1 - c0;
      buf.resize(planes * g.kw * w);
      uint32_t* dst = buf.data();
      for (const uint32_t* src : {BS ? g.bs : nullptr, BM ? g.bm : nullptr}) {
        if (!src) continue;
        for (int64_t k = 0; k < g.kw; ++k)
          std::memcpy(dst + k * w, src + k * g.n + c0, w * sizeof(uint32_t));
        if (src == g.bs) gp.bs = dst;
        else gp.bm = dst;
        dst += g.kw * w;
      }
      gp.ldb = w;
      gp.out = g.out + c0;
      c1 -= c0;
      c0 = 0;
    }
    if (level == 2) gemm_block_avx512<AS, AM, BS, BM>(gp, r0, r1, c0, c1);
    else if (level == 1) gemm_block_avx2<AS, AM, BS, BM>(gp, r0, r1, c0, c1);
    else gemm_scalar<AS, AM, BS, BM>(gp, r0, r1, c0, c1);
  };
  // Below ~64K word products (a few microseconds) a hand-off to the pool costs more than it saves.
  if (g.m * g.n * g.kw < (1 << 16)) {
    for (int64_t t = 0; t < n_panels * n_rows; ++t) task(t);
  } else {
    Pool::get().run(n_panels * n_rows, task);
  }
}

void gemm_dispatch(const GemmArgs& g) {
  int code = (g.as ? 8 : 0) | (g.am ? 4 : 0) | (g.bs ? 2 : 0) | (g.bm ? 1 : 0);
  switch (code) {
#define BNN_CASE(c) \
  case c: return gemm_run<(c & 8) != 0, (c & 4) != 0, (c & 2) != 0, (c & 1) != 0>(g);
    BNN_CASE(1) BNN_CASE(2) BNN_CASE(3) BNN_CASE(4) BNN_CASE(5) BNN_CASE(6) BNN_CASE(7)
    BNN_CASE(8) BNN_CASE(9) BNN_CASE(10) BNN_CASE(11) BNN_CASE(12) BNN_CASE(13) BNN_CASE(14)
    BNN_CASE(15)
#undef BNN_CASE
    default: return;
  }
}

// ------------------------------------------------------------------------------- W1/W1.58 GEMV

// y[r, c] = sum_k x[r, k] * w[k, c] with w = (1 - 2 sign) * mask (mask absent: all ones).
// Three bodies (selected by `method`):
//   0 "lut":    T-MAC-style: for each group of 4 activations a table of the 16 subset sums; the
//               weight nibble of a column indexes it (two 8-entry vpermps + a blend per 8
//               columns). Binary weights use the table of signed sums sum(+-x) directly; ternary
//               ones accumulate T[mask] - 2 T[sign] (sign is set only where mask is).
//   1 "direct": every weight bit flips the sign of its broadcast activation (xor into the f32
//               sign bit) and, for ternary weights, masks it; then an add.
//   2 "int8":   the "lut" body on int32 tables of int8 activation codes: exact integer sums.
// T is float (methods 0, 1) or int32 (method 2).

struct GemvArgs {
  const void* x;  // (m, kw*32) f32 or int8 codes (as int32 after widening in `tables`)
  const uint32_t *ws, *wm;
  int64_t m, kw, n;
  void* out;  // (m, n) f32 or int32
};

// Subset-sum tables of one activation row: t[g*16 + idx] = sum_{i in idx} x[4g + i] (and the
// signed ones: sum_i (idx_i ? -x : x)). Built in a fixed order (independent of threads).
template <typename T>
void build_tables(const T* x, int64_t k, T* subset, T* signed_) {
  for (int64_t g = 0; g < k / 4; ++g) {
    const T* v = x + 4 * g;
    T* s = subset + 16 * g;
    T* d = signed_ ? signed_ + 16 * g : nullptr;
    for (int idx = 0; idx < 16; ++idx) {
      T acc = 0, sg = 0;
      for (int i = 0; i < 4; ++i) {
        if (idx >> i & 1) {
          acc += v[i];
          sg -= v[i];
        } else {
          sg += v[i];
        }
      }
      s[idx] = acc;
      if (d) d[idx] = sg;
    }
  }
}

template <typename T>
void gemv_lut_scalar(const T* tab_sub, const T* tab_sgn, const GemvArgs& g, T* out, int64_t c0,
                     int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    T acc = 0, acc2 = 0;
    for (int64_t k = 0; k < g.kw; ++k) {
      uint32_t s = g.ws ? g.ws[k * g.n + c] : 0;
      uint32_t m = g.wm ? g.wm[k * g.n + c] : 0;
      for (int j = 0; j < 8; ++j) {
        int64_t grp = 8 * k + j;
        if (g.wm) {
          acc += tab_sub[16 * grp + (m >> (4 * j) & 15)];
          acc2 += tab_sub[16 * grp + (s >> (4 * j) & 15)];
        } else {
          acc += tab_sgn[16 * grp + (s >> (4 * j) & 15)];
        }
      }
    }
    out[c] = g.wm ? acc - 2 * acc2 : acc;
  }
}

BNN_AVX2 inline __m256 lut16_ps(__m256 lo, __m256 hi, __m256i idx) {
  __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

BNN_AVX2 inline __m256i lut16_epi32(__m256i lo, __m256i hi, __m256i idx) {
  __m256i a = _mm256_permutevar8x32_epi32(lo, idx), b = _mm256_permutevar8x32_epi32(hi, idx);
  return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b),
                                              _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))));
}

// NR vectors of 8 columns from c0, one activation row (its tables), f32 tables.
template <int NR, bool TERNARY>
BNN_AVX2 void gemv_lut_f32_tile(const float* tab_sub, const float* tab_sgn, const GemvArgs& g,
                                float* out, int64_t c0) {
  __m256 acc[NR], acc2[NR];
  for (int v = 0; v < NR; ++v) acc[v] = acc2[v] = _mm256_setzero_ps();
  const float* tab = TERNARY ? tab_sub : tab_sgn;
  for (int64_t k = 0; k < g.kw; ++k) {
    __m256i s[NR], m[NR];
    for (int v = 0; v < NR; ++v) {
      s[v] = _mm256_loadu_si256((const __m256i*)(g.ws + k * g.n + c0 + 8 * v));
      if (TERNARY) m[v] = _mm256_loadu_si256((const __m256i*)(g.wm + k * g.n + c0 + 8 * v));
    }
    for (int j = 0; j < 8; ++j) {
      const float* t = tab + 16 * (8 * k + j);
      __m256 lo = _mm256_loadu_ps(t), hi = _mm256_loadu_ps(t + 8);
      for (int v = 0; v < NR; ++v) {
        if (TERNARY) {
          acc[v] = _mm256_add_ps(acc[v], lut16_ps(lo, hi, _mm256_srli_epi32(m[v], 4 * j)));
          acc2[v] = _mm256_add_ps(acc2[v], lut16_ps(lo, hi, _mm256_srli_epi32(s[v], 4 * j)));
        } else {
          acc[v] = _mm256_add_ps(acc[v], lut16_ps(lo, hi, _mm256_srli_epi32(s[v], 4 * j)));
        }
      }
    }
  }
  const __m256 two = _mm256_set1_ps(2.0f);
  for (int v = 0; v < NR; ++v) {
    __m256 r = TERNARY ? _mm256_sub_ps(acc[v], _mm256_mul_ps(two, acc2[v])) : acc[v];
    _mm256_storeu_ps(out + c0 + 8 * v, r);
  }
}

template <int NR, bool TERNARY>
BNN_AVX2 void gemv_lut_i32_tile(const int32_t* tab_sub, const int32_t* tab_sgn,
                                const GemvArgs& g, int32_t* out, int64_t c0) {
  __m256i acc[NR], acc2[NR];
  for (int v = 0; v < NR; ++v) acc[v] = acc2[v] = _mm256_setzero_si256();
  const int32_t* tab = TERNARY ? tab_sub : tab_sgn;
  for (int64_t k = 0; k < g.kw; ++k) {
    __m256i s[NR], m[NR];
    for (int v = 0; v < NR; ++v) {
      s[v] = _mm256_loadu_si256((const __m256i*)(g.ws + k * g.n + c0 + 8 * v));
      if (TERNARY) m[v] = _mm256_loadu_si256((const __m256i*)(g.wm + k * g.n + c0 + 8 * v));
    }
    for (int j = 0; j < 8; ++j) {
      const int32_t* t = tab + 16 * (8 * k + j);
      __m256i lo = _mm256_loadu_si256((const __m256i*)t);
      __m256i hi = _mm256_loadu_si256((const __m256i*)(t + 8));
      for (int v = 0; v < NR; ++v) {
        if (TERNARY) {
          acc[v] = _mm256_add_epi32(acc[v], lut16_epi32(lo, hi, _mm256_srli_epi32(m[v], 4 * j)));
          acc2[v] = _mm256_add_epi32(acc2[v],
                                     lut16_epi32(lo, hi, _mm256_srli_epi32(s[v], 4 * j)));
        } else {
          acc[v] = _mm256_add_epi32(acc[v], lut16_epi32(lo, hi, _mm256_srli_epi32(s[v], 4 * j)));
        }
      }
    }
  }
  for (int v = 0; v < NR; ++v) {
    __m256i r = TERNARY ? _mm256_sub_epi32(acc[v], _mm256_slli_epi32(acc2[v], 1)) : acc[v];
    _mm256_storeu_si256((__m256i*)(out + c0 + 8 * v), r);
  }
}

template <typename T>
void gemv_lut_avx2(const T* sub, const T* sgn, const GemvArgs& g, T* out, int64_t c0,
                   int64_t c1) {
  const bool ternary = g.wm != nullptr;
  int64_t c = c0;
  for (; c + 32 <= c1; c += 32) {
    if constexpr (std::is_same_v<T, float>) {
      if (ternary) gemv_lut_f32_tile<2, true>(sub, sgn, g, out, c), gemv_lut_f32_tile<2, true>(
          sub, sgn, g, out, c + 16);
      else gemv_lut_f32_tile<4, false>(sub, sgn, g, out, c);
    } else {
      if (ternary) gemv_lut_i32_tile<2, true>(sub, sgn, g, out, c), gemv_lut_i32_tile<2, true>(
          sub, sgn, g, out, c + 16);
      else gemv_lut_i32_tile<4, false>(sub, sgn, g, out, c);
    }
  }
  for (; c + 8 <= c1; c += 8) {
    if constexpr (std::is_same_v<T, float>) {
      if (ternary) gemv_lut_f32_tile<1, true>(sub, sgn, g, out, c);
      else gemv_lut_f32_tile<1, false>(sub, sgn, g, out, c);
    } else {
      if (ternary) gemv_lut_i32_tile<1, true>(sub, sgn, g, out, c);
      else gemv_lut_i32_tile<1, false>(sub, sgn, g, out, c);
    }
  }
  if (c < c1) gemv_lut_scalar<T>(sub, sgn, g, out, c, c1);
}


// Nibble j of every lane of w looks up its entry of the 16-entry table t.
BNN_AVX512 inline __m512i look512(__m512i w, __m512i t, int j) {
  return _mm512_permutexvar_epi32(_mm512_srli_epi32(w, 4 * j), t);
}

// Lane-wise add: f32 (bit patterns in integer registers) or int32.
template <bool F>
BNN_AVX512 inline __m512i add512(__m512i a, __m512i b) {
  if constexpr (F)
    return _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b)));
  else
    return _mm512_add_epi32(a, b);
}

// AVX-512 "lut"/"int8" tile: one vpermps/vpermd looks up 16 columns in a whole 16-entry table.
template <typename T, int NR, bool TERNARY>
BNN_AVX512 void gemv_lut512_tile(const T* tab_sub, const T* tab_sgn, const GemvArgs& g, T* out,
                                 int64_t c0, __mmask16 tail) {
  constexpr bool F = std::is_same_v<T, float>;
  __m512i acc[NR], acc2[NR];  // f32 bit patterns when F
  for (int v = 0; v < NR; ++v) acc[v] = acc2[v] = _mm512_setzero_si512();
  const T* tab = TERNARY ? tab_sub : tab_sgn;
  for (int64_t k = 0; k < g.kw; ++k) {
    __m512i s[NR], m[NR];
    for (int v = 0; v < NR; ++v) {
      __mmask16 lanes = v == NR - 1 ? tail : static_cast<__mmask16>(0xffff);
      s[v] = _mm512_maskz_loadu_epi32(lanes, g.ws + k * g.n + c0 + 16 * v);
      if (TERNARY) m[v] = _mm512_maskz_loadu_epi32(lanes, g.wm + k * g.n + c0 + 16 * v);
    }
    for (int j = 0; j < 8; ++j) {
      const __m512i t = _mm512_loadu_si512(tab + 16 * (8 * k + j));
      for (int v = 0; v < NR; ++v) {
        if (TERNARY) {
          acc[v] = add512<F>(acc[v], look512(m[v], t, j));
          acc2[v] = add512<F>(acc2[v], look512(s[v], t, j));
        } else {
          acc[v] = add512<F>(acc[v], look512(s[v], t, j));
        }
      }
    }
  }
  for (int v = 0; v < NR; ++v) {
    __mmask16 lanes = v == NR - 1 ? tail : static_cast<__mmask16>(0xffff);
    __m512i r = acc[v];
    if (TERNARY) {
      if constexpr (F)
        r = _mm512_castps_si512(_mm512_sub_ps(
            _mm512_castsi512_ps(acc[v]),
            _mm512_mul_ps(_mm512_set1_ps(2.0f), _mm512_castsi512_ps(acc2[v]))));
      else
        r = _mm512_sub_epi32(acc[v], _mm512_slli_epi32(acc2[v], 1));
    }
    _mm512_mask_storeu_epi32(out + c0 + 16 * v, lanes, r);
  }
}

template <typename T>
BNN_AVX512 void gemv_lut_avx512(const T* sub, const T* sgn, const GemvArgs& g, T* out,
                                int64_t c0, int64_t c1) {
  const bool ternary = g.wm != nullptr;
  int64_t c = c0;
  for (; c + 64 <= c1; c += 64) {
    if (ternary) gemv_lut512_tile<T, 4, true>(sub, sgn, g, out, c, 0xffff);
    else gemv_lut512_tile<T, 4, false>(sub, sgn, g, out, c, 0xffff);
  }
  for (; c < c1; c += 16) {
    __mmask16 tail = static_cast<__mmask16>((1u << std::min<int64_t>(16, c1 - c)) - 1);
    if (ternary) gemv_lut512_tile<T, 1, true>(sub, sgn, g, out, c, tail);
    else gemv_lut512_tile<T, 1, false>(sub, sgn, g, out, c, tail);
  }
}

// "direct": per weight bit, xor the bit into the sign of the broadcast activation.
template <int NR, bool TERNARY>
BNN_AVX2 void gemv_direct_tile(const float* x, const GemvArgs& g, float* out, int64_t c0) {
  __m256 acc[NR];
  for (int v = 0; v < NR; ++v) acc[v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < g.kw; ++k) {
    __m256i s[NR], m[NR];
    for (int v = 0; v < NR; ++v) {
      s[v] = _mm256_loadu_si256((const __m256i*)(g.ws + k * g.n + c0 + 8 * v));
      if (TERNARY) m[v] = _mm256_loadu_si256((const __m256i*)(g.wm + k * g.n + c0 + 8 * v));
    }
    const float* xk = x + 32 * k;
    for (int b = 0; b < 32; ++b) {
      __m256 xb = _mm256_set1_ps(xk[b]);
      const __m128i sh = _mm_cvtsi32_si128(31 - b);
      for (int v = 0; v < NR; ++v) {
        // Bit b shifted to bit 31 (the f32 sign bit), every other bit masked off.
        __m256i bit = _mm256_sll_epi32(s[v], sh);
        __m256 val = _mm256_xor_ps(xb, _mm256_castsi256_ps(_mm256_and_si256(
                                           bit, _mm256_set1_epi32(static_cast<int>(0x80000000u)))));
        if (TERNARY) {
          __m256i keep = _mm256_srai_epi32(_mm256_sll_epi32(m[v], sh), 31);
          val = _mm256_and_ps(val, _mm256_castsi256_ps(keep));
        }
        acc[v] = _mm256_add_ps(acc[v], val);
      }
    }
  }
  for (int v = 0; v < NR; ++v) _mm256_storeu_ps(out + c0 + 8 * v, acc[v]);
}

void gemv_direct_scalar(const float* x, const GemvArgs& g, float* out, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; ++c) {
    float acc = 0;
    for (int64_t k = 0; k < g.kw; ++k) {
      uint32_t s = g.ws[k * g.n + c];
      uint32_t m = g.wm ? g.wm[k * g.n + c] : ~0u;
      for (int b = 0; b < 32; ++b) {
        float v = (s >> b & 1) ? -x[32 * k + b] : x[32 * k + b];
        acc += (m >> b & 1) ? v : 0.0f;
      }
    }
    out[c] = acc;
  }
}

BNN_AVX2 void gemv_direct_avx2(const float* x, const GemvArgs& g, float* out, int64_t c0,
                               int64_t c1) {
  const bool ternary = g.wm != nullptr;
  int64_t c = c0;
  for (; c + 16 <= c1; c += 16) {
    if (ternary) gemv_direct_tile<2, true>(x, g, out, c);
    else gemv_direct_tile<2, false>(x, g, out, c);
  }
  for (; c + 8 <= c1; c += 8) {
    if (ternary) gemv_direct_tile<1, true>(x, g, out, c);
    else gemv_direct_tile<1, false>(x, g, out, c);
  }
  if (c < c1) gemv_direct_scalar(x, g, out, c, c1);
}

void gemv_run(const GemvArgs& g, int method) {
  const int64_t k = 32 * g.kw, groups = k / 4;
  const bool avx2 = use_avx2(), avx512 = use_avx512();
  const int64_t block = 64;  // output columns per task
  const int64_t n_blocks = (g.n + block - 1) / block;
  for (int64_t r = 0; r < g.m; ++r) {
    if (method == 1) {
      const float* x = static_cast<const float*>(g.x) + r * k;
      float* out = static_cast<float*>(g.out) + r * g.n;
      Pool::get().run(n_blocks, [&](int64_t t) {
        int64_t c0 = t * block, c1 = std::min(g.n, c0 + block);
        if (avx2) gemv_direct_avx2(x, g, out, c0, c1);
        else gemv_direct_scalar(x, g, out, c0, c1);
      });
      continue;
    }
    auto body = [&](auto zero) {
      using T = decltype(zero);
      const T* x = static_cast<const T*>(g.x) + r * k;
      std::vector<T> sub(16 * groups), sgn(g.wm ? 0 : 16 * groups);
      build_tables<T>(x, k, sub.data(), g.wm ? nullptr : sgn.data());
      T* out = static_cast<T*>(g.out) + r * g.n;
      Pool::get().run(n_blocks, [&](int64_t t) {
        int64_t c0 = t * block, c1 = std::min(g.n, c0 + block);
        if (avx512) gemv_lut_avx512<T>(sub.data(), sgn.data(), g, out, c0, c1);
        else if (avx2) gemv_lut_avx2<T>(sub.data(), sgn.data(), g, out, c0, c1);
        else gemv_lut_scalar<T>(sub.data(), sgn.data(), g, out, c0, c1);
      });
    };
    if (method == 0) body(0.0f);
    else body(int32_t{0});
  }
}

// ------------------------------------------------------------------------------- W1.58A8 (trits)

// y[r, c] = sum_k x[r, k] * w[k, c] for int8 activation codes x and ternary weights w, stored as
// digits t = w + 1 in {0, 1, 2} (kernels/trits.py packs them). Chunk (b, g) is 64 bytes: columns
// 16b .. 16b+15 and k in [4Dg, 4D(g+1)); byte 4c + j holds the D digits of k = 4Dg + 4i + j,
// i < D. D = 4 ("2bit"): digit i at bits 2i. D = 5 ("base3", 1.6 bits per weight): the byte is
// ceil(256 v / 243) for v = sum_i t_i 3^(4-i), and digit i is the top of 3 * (byte * 3^i mod
// 256), i.e. (byte * 3^i mod 256) * 3 >> 8: multiplying the base-3 fraction v / 243 by 3 shifts
// its next digit above the binary point (checked for all 243 values in tests/kernels). Four
// digits of one column are adjacent, so one u8 x s8 dot of 4 (vpdpbusd / vpmaddubsw) serves 16
// columns; sum t x - sum x = sum w x is exact in int32.

struct TritArgs {
  const int8_t* x;   // (m, kp) codes, zero past K
  const uint8_t* w;  // (n_blocks, groups, 64)
  int64_t m, kp, n, groups;
  int32_t* out;      // (m, n)
};

inline int32_t load4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

template <int D>
inline int trit_digit(uint8_t q, int i) {
  if (D == 4) return q >> (2 * i) & 3;
  static const int pow3[5] = {1, 3, 9, 27, 81};
  return (static_cast<uint8_t>(q * pow3[i]) * 3) >> 8;
}

template <int D>
void trit_scalar(const TritArgs& a, const int32_t* rowsum, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b)
    for (int64_t r = 0; r < a.m; ++r)
      for (int c = 0; c < 16 && 16 * b + c < a.n; ++c) {
        int32_t acc = 0;
        for (int64_t g = 0; g < a.groups; ++g) {
          const uint8_t* q = a.w + (b * a.groups + g) * 64 + 4 * c;
          const int8_t* x = a.x + r * a.kp + 4 * D * g;
          for (int i = 0; i < D; ++i)
            for (int j = 0; j < 4; ++j) acc += trit_digit<D>(q[j], i) * x[4 * i + j];
        }
        a.out[r * a.n + 16 * b + c] = acc - rowsum[r];
      }
}

#define BNN_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,avx2")))

// MR rows x NB blocks of 16 columns; independent accumulators hide the dot's latency.
template <int D, int MR, int NB>
BNN_VNNI void trit_tile512(const TritArgs& a, const int32_t* rowsum, int64_t r0, int64_t b0) {
  __m512i acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NB; ++v) acc[r][v] = _mm512_setzero_si512();
  const __m512i three = _mm512_set1_epi16(3), c768 = _mm512_set1_epi16(768);
  const __m512i hi = _mm512_set1_epi16(static_cast<short>(0xff00)), low2 = _mm512_set1_epi8(3);
  for (int64_t g = 0; g < a.groups; ++g) {
    __m512i q[NB], he[NB], ho[NB];
    for (int v = 0; v < NB; ++v) {
      q[v] = _mm512_loadu_si512(a.w + ((b0 + v) * a.groups + g) * 64);
      if (D == 5) {  // (byte << 8) in 16-bit lanes, even and odd bytes apart
        he[v] = _mm512_slli_epi16(q[v], 8);
        ho[v] = _mm512_and_si512(q[v], hi);
      }
    }
    const int8_t* xg = a.x + r0 * a.kp + 4 * D * g;
    for (int i = 0; i < D; ++i) {
      __m512i t[NB];
      for (int v = 0; v < NB; ++v) {
        if (D == 4) {
          t[v] = _mm512_and_si512(_mm512_srli_epi16(q[v], 2 * i), low2);
        } else {
          if (i > 0) {
            he[v] = _mm512_mullo_epi16(he[v], three);
            ho[v] = _mm512_mullo_epi16(ho[v], three);
          }
          // even digit: (x << 8) * 3 >> 16 = 3x >> 8; odd: (x << 8) * 768 >> 16 = 3x, top byte
          t[v] = _mm512_ternarylogic_epi32(_mm512_mulhi_epu16(he[v], three),
                                           _mm512_mulhi_epu16(ho[v], c768), hi, 0xf8);
        }
      }
      for (int r = 0; r < MR; ++r) {
        const __m512i xr = _mm512_set1_epi32(load4(xg + r * a.kp + 4 * i));
        for (int v = 0; v < NB; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], t[v], xr);
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m512i sub = _mm512_set1_epi32(rowsum[r0 + r]);
    for (int v = 0; v < NB; ++v) {
      int64_t c0 = 16 * (b0 + v);
      int64_t left = std::min<int64_t>(16, a.n - c0);
      __mmask16 lanes = static_cast<__mmask16>((1u << left) - 1);
      _mm512_mask_storeu_epi32(a.out + (r0 + r) * a.n + c0, lanes,
                               _mm512_sub_epi32(acc[r][v], sub));
    }
  }
}

template <int D, int MR>
BNN_VNNI void trit_rows512(const TritArgs& a, const int32_t* rowsum, int64_t r0, int64_t b0,
                           int64_t b1) {
  constexpr int NB = MR == 1 ? 4 : (MR <= 4 ? 2 : 1);
  int64_t b = b0;
  for (; b + NB <= b1; b += NB) trit_tile512<D, MR, NB>(a, rowsum, r0, b);
  for (; b < b1; ++b) trit_tile512<D, MR, 1>(a, rowsum, r0, b);
}

template <int D>
BNN_VNNI void trit_avx512(const TritArgs& a, const int32_t* rowsum, int64_t b0, int64_t b1) {
  int64_t r = 0;
  for (; r + 8 <= a.m; r += 8) trit_rows512<D, 8>(a, rowsum, r, b0, b1);
  if (r + 4 <= a.m) trit_rows512<D, 4>(a, rowsum, r, b0, b1), r += 4;
  if (r + 2 <= a.m) trit_rows512<D, 2>(a, rowsum, r, b0, b1), r += 2;
  if (r < a.m) trit_rows512<D, 1>(a, rowsum, r, b0, b1);
}

// AVX2: a chunk is two 256-bit halves (columns 0-7, 8-15); u8 x s8 pairs by vpmaddubsw (|sum of
// a pair| <= 2 * 2 * 128, no saturation), widened by vpmaddwd.
template <int D, int MR>
BNN_AVX2 void trit_tile256(const TritArgs& a, const int32_t* rowsum, int64_t r0, int64_t b) {
  __m256i acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const __m256i three = _mm256_set1_epi16(3), c768 = _mm256_set1_epi16(768);
  const __m256i hi = _mm256_set1_epi16(static_cast<short>(0xff00)), low2 = _mm256_set1_epi8(3);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < a.groups; ++g) {
    __m256i q[2], he[2], ho[2];
    for (int v = 0; v < 2; ++v) {
      q[v] = _mm256_loadu_si256((const __m256i*)(a.w + (b * a.groups + g) * 64 + 32 * v));
      if (D == 5) {
        he[v] = _mm256_slli_epi16(q[v], 8);
        ho[v] = _mm256_and_si256(q[v], hi);
      }
    }
    const int8_t* xg = a.x + r0 * a.kp + 4 * D * g;
    for (int i = 0; i < D; ++i) {
      __m256i t[2];
      for (int v = 0; v < 2; ++v) {
        if (D == 4) {
          t[v] = _mm256_and_si256(_mm256_srli_epi16(q[v], 2 * i), low2);
        } else {
          if (i > 0) {
            he[v] = _mm256_mullo_epi16(he[v], three);
            ho[v] = _mm256_mullo_epi16(ho[v], three);
          }
          t[v] = _mm256_or_si256(_mm256_mulhi_epu16(he[v], three),
                                 _mm256_and_si256(_mm256_mulhi_epu16(ho[v], c768), hi));
        }
      }
      for (int r = 0; r < MR; ++r) {
        const __m256i xr = _mm256_set1_epi32(load4(xg + r * a.kp + 4 * i));
        for (int v = 0; v < 2; ++v)
          acc[r][v] = _mm256_add_epi32(acc[r][v],
                                       _mm256_madd_epi16(_mm256_maddubs_epi16(t[v], xr), ones));
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    const __m256i sub = _mm256_set1_epi32(rowsum[r0 + r]);
    alignas(32) int32_t tmp[16];
    _mm256_store_si256((__m256i*)tmp, _mm256_sub_epi32(acc[r][0], sub));
    _mm256_store_si256((__m256i*)(tmp + 8), _mm256_sub_epi32(acc[r][1], sub));
    int64_t c0 = 16 * b, left = std::min<int64_t>(16, a.n - c0);
    std::memcpy(a.out + (r0 + r) * a.n + c0, tmp, left * sizeof(int32_t));
  }
}

template <int D>
BNN_AVX2 void trit_avx2(const TritArgs& a, const int32_t* rowsum, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    int64_t r = 0;
    for (; r + 4 <= a.m; r += 4) trit_tile256<D, 4>(a, rowsum, r, b);
    if (r + 2 <= a.m) trit_tile256<D, 2>(a, rowsum, r, b), r += 2;
    if (r < a.m) trit_tile256<D, 1>(a, rowsum, r, b);
  }
}

bool use_vnni() {
  static const bool vnni = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return vnni && use_avx512();
}

void trit_run(const TritArgs& a, int digits) {
  std::vector<int32_t> rowsum(a.m, 0);
  for (int64_t r = 0; r < a.m; ++r)
    for (int64_t k = 0; k < a.kp; ++k) rowsum[r] += a.x[r * a.kp + k];
  const int64_t n_blocks = (a.n + 15) / 16, per_task = 4;  // 64 columns per task
  const int64_t tasks = (n_blocks + per_task - 1) / per_task;
  const bool vnni = use_vnni(), avx2 = use_avx2();
  auto task = [&](int64_t t) {
    int64_t b0 = t * per_task, b1 = std::min(n_blocks, b0 + per_task);
    if (digits == 5) {
      if (vnni) trit_avx512<5>(a, rowsum.data(), b0, b1);
      else if (avx2) trit_avx2<5>(a, rowsum.data(), b0, b1);
      else trit_scalar<5>(a, rowsum.data(), b0, b1);
    } else {
      if (vnni) trit_avx512<4>(a, rowsum.data(), b0, b1);
      else if (avx2) trit_avx2<4>(a, rowsum.data(), b0, b1);
      else trit_scalar<4>(a, rowsum.data(), b0, b1);
    }
  };
  if (a.m * a.n * a.kp < (1 << 18)) {
    for (int64_t t = 0; t < tasks; ++t) task(t);
  } else {
    Pool::get().run(tasks, task);
  }
}

// ------------------------------------------------------------------------------- packing

// Rows of `k` f32 values -> sign words (x < 0) and/or mask words (x != 0), (rows, kw).
BNN_AVX2 void pack_rows_avx2(const float* x, int64_t r0, int64_t r1, int64_t k, int64_t kw,
                             uint32_t* sign, uint32_t* mask) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = x + r * k;
    for (int64_t w = 0; w < kw; ++w) {
      uint32_t s = 0, m = 0;
      int64_t base = 32 * w;
      if (base + 32 <= k) {
        for (int i = 0; i < 4; ++i) {
          __m256 v = _mm256_loadu_ps(row + base + 8 * i);
          s |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ)))
               << (8 * i);
          m |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ)))
               << (8 * i);
        }
      } else {
        for (int64_t i = base; i < k; ++i) {
          s |= static_cast<uint32_t>(row[i] < 0.0f) << (i - base);
          m |= static_cast<uint32_t>(row[i] != 0.0f) << (i - base);
        }
      }
      if (sign) sign[r * kw + w] = s;
      if (mask) mask[r * kw + w] = m;
    }
  }
}

// The same for int32 rows: the sign bit of an int32 is x < 0.
BNN_AVX2 void pack_rows_i32_avx2(const int32_t* x, int64_t r0, int64_t r1, int64_t k, int64_t kw,
                                 uint32_t* sign, uint32_t* mask) {
  const __m256i zero = _mm256_setzero_si256();
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t* row = x + r * k;
    for (int64_t w = 0; w < kw; ++w) {
      uint32_t s = 0, m = 0;
      int64_t base = 32 * w;
      if (base + 32 <= k) {
        for (int i = 0; i < 4; ++i) {
          __m256i v = _mm256_loadu_si256((const __m256i*)(row + base + 8 * i));
          s |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(v))) << (8 * i);
          uint32_t eq = static_cast<uint32_t>(
              _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, zero))));
          m |= (~eq & 0xffu) << (8 * i);
        }
      } else {
        for (int64_t i = base; i < k; ++i) {
          s |= static_cast<uint32_t>(row[i] < 0) << (i - base);
          m |= static_cast<uint32_t>(row[i] != 0) << (i - base);
        }
      }
      if (sign) sign[r * kw + w] = s;
      if (mask) mask[r * kw + w] = m;
    }
  }
}

template <typename T>
void pack_rows_scalar(const T* x, int64_t r0, int64_t r1, int64_t k, int64_t kw,
                      uint32_t* sign, uint32_t* mask) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t w = 0; w < kw; ++w) {
      uint32_t s = 0, m = 0;
      for (int64_t i = 32 * w; i < std::min<int64_t>(k, 32 * w + 32); ++i) {
        s |= static_cast<uint32_t>(x[r * k + i] < T(0)) << (i - 32 * w);
        m |= static_cast<uint32_t>(x[r * k + i] != T(0)) << (i - 32 * w);
      }
      if (sign) sign[r * kw + w] = s;
      if (mask) mask[r * kw + w] = m;
    }
  }
}

// ------------------------------------------------------------------------------- ceiling

// The XNOR-popcount inner loop alone on L1-resident operands (a 4 x 16 tile over 64 words,
// repeated): the most bit-MACs per second this code can reach, without memory traffic.
// AVX2: a 4 x 16 tile; AVX-512: a 4 x 64 tile; both over 64 words.
int64_t ceiling_loop(int64_t reps, int32_t* sink) {
  const int cols = use_avx512() ? 64 : 16;
  alignas(64) uint32_t a[4 * 64], b[64 * 64];
  for (int i = 0; i < 4 * 64; ++i) a[i] = 2654435761u * (i + 1);
  for (int i = 0; i < 64 * 64; ++i) b[i] = 2246822519u * (i + 7);
  int32_t out[4 * 64];
  GemmArgs g{a, nullptr, b, nullptr, 4, 64, cols, 64 * 32, out, cols};
  for (int64_t r = 0; r < reps; ++r) {
    if (use_avx512()) gemm_tile512<true, false, true, false, 4, 4>(g, 0, 0, 0xffff);
    else gemm_tile<true, false, true, false, 4, 2>(g, 0, 0);
    // The results escape and memory may have changed: every tile is computed, none is merged
    // with the next, and no tile waits for the previous one.
    asm volatile("" : : "r"(out) : "memory");
  }
  *sink = out[0];
  return reps * 4 * cols * 64 * 32;  // bit-MACs
}

}  // namespace

// ------------------------------------------------------------------------------- C interface

extern "C" {

int bnn_num_threads() { return Pool::get().threads(); }
void bnn_set_num_threads(int n) { Pool::get().set_threads(n <= 0 ? machine_threads() : n); }
int bnn_machine_threads() { return machine_threads(); }
// Cap the dispatch at `level` (2 avx512, 1 avx2, 0 scalar); returns the level now in use.
int bnn_set_isa(int level) {
  isa_cap.store(std::max(0, std::min(2, level)));
  return isa_level();
}
int bnn_cpu_isa() { return cpu_level(); }
const char* bnn_isa() {
  static const char* names[] = {"scalar", "avx2", "avx512"};
  return names[isa_level()];
}

// Gbit-MAC/s of the XNOR-popcount register tile of the dispatched ISA on `threads` threads run
// together for about `seconds`: each thread times bursts of ~0.2 ms and its rate is the median
// burst (a burst in which the thread was descheduled by other processes counts as one slow
// burst, not as a slower average); the threads' rates are summed.
double bnn_ceiling(int threads, double seconds) {
  if (!use_avx2()) return 0.0;
  threads = std::max(1, threads);
  std::vector<double> rate(threads, 0.0);
  std::vector<int32_t> sink(threads, 0);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      using clock = std::chrono::steady_clock;
      int64_t reps = 16;
      for (;;) {  // calibrate a burst to about 0.2 ms
        auto t0 = clock::now();
        ceiling_loop(reps, &sink[t]);
        if (std::chrono::duration<double>(clock::now() - t0).count() > 2e-4 || reps > (1 << 24))
          break;
        reps *= 2;
      }
      std::vector<double> bursts;
      auto start = clock::now();
      while (std::chrono::duration<double>(clock::now() - start).count() < seconds ||
             bursts.size() < 5) {
        auto t0 = clock::now();
        int64_t macs = ceiling_loop(reps, &sink[t]);
        bursts.push_back(macs / std::chrono::duration<double>(clock::now() - t0).count());
      }
      std::nth_element(bursts.begin(), bursts.begin() + bursts.size() / 2, bursts.end());
      rate[t] = bursts[bursts.size() / 2];
    });
  }
  for (auto& t : ts) t.join();
  double total = 0;
  for (double r : rate) total += r;
  return total * 1e-9;
}
}

// ------------------------------------------------------------------------------- FFI handlers

namespace {

const uint32_t* plane(const ffi::AnyBuffer& b, bool present) {
  return present ? static_cast<const uint32_t*>(b.untyped_data()) : nullptr;
}

// has: bit 3 a.sign, 2 a.mask, 1 b.sign, 0 b.mask (absent planes arrive as empty arrays).
ffi::Error GemmImpl(ffi::AnyBuffer as, ffi::AnyBuffer am, ffi::AnyBuffer bs, ffi::AnyBuffer bm,
                    ffi::Result<ffi::Buffer<ffi::S32>> out, int64_t has, int64_t length) {
  auto od = out->dimensions();
  if (od.size() != 2) return ffi::Error::InvalidArgument("bnn_gemm: output must be 2-D");
  const ffi::AnyBuffer& a_any = (has & 8) ? as : am;
  const ffi::AnyBuffer& b_any = (has & 2) ? bs : bm;
  if (a_any.dimensions().size() != 2 || b_any.dimensions().size() != 2)
    return ffi::Error::InvalidArgument("bnn_gemm: planes must be 2-D");
  GemmArgs g{plane(as, has & 8), plane(am, has & 4), plane(bs, has & 2), plane(bm, has & 1),
             od[0], a_any.dimensions()[1], od[1], length, out->typed_data(), od[1]};
  if (b_any.dimensions()[0] != g.kw || a_any.dimensions()[0] != g.m || b_any.dimensions()[1] != g.n)
    return ffi::Error::InvalidArgument("bnn_gemm: plane shapes do not match");
  gemm_dispatch(g);
  return ffi::Error::Success();
}

// method: 0 lut (f32), 1 direct (f32), 2 int8 codes (as int32 input, int32 output).
ffi::Error GemvImpl(ffi::AnyBuffer x, ffi::AnyBuffer ws, ffi::AnyBuffer wm,
                    ffi::Result<ffi::AnyBuffer> out, int64_t ternary, int64_t method) {
  auto xd = x.dimensions(), wd = ws.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != 32 * wd[0])
    return ffi::Error::InvalidArgument("bnn_gemv: x must be (M, 32*Kw), w planes (Kw, N)");
  GemvArgs g{x.untyped_data(), plane(ws, true), plane(wm, ternary != 0), xd[0], wd[0], wd[1],
             out->untyped_data()};
  gemv_run(g, static_cast<int>(method));
  return ffi::Error::Success();
}

// x (M, Kp) int8 codes, w (n_blocks, groups, 64) uint8 digits -> int32 (M, N); digits 4 or 5.
ffi::Error TritImpl(ffi::Buffer<ffi::S8> x, ffi::Buffer<ffi::U8> w,
                    ffi::Result<ffi::Buffer<ffi::S32>> out, int64_t digits) {
  auto xd = x.dimensions(), wd = w.dimensions(), od = out->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || od.size() != 2 || wd[2] != 64 || od[0] != xd[0] ||
      (digits != 4 && digits != 5) || xd[1] != 4 * digits * wd[1] || (od[1] + 15) / 16 != wd[0])
    return ffi::Error::InvalidArgument(
        "bnn_trit_gemv: x must be (M, 4*D*G), w (ceil(N/16), G, 64), out (M, N), D in {4, 5}");
  TritArgs a{x.typed_data(), w.typed_data(), xd[0], xd[1], od[1], wd[1], out->typed_data()};
  trit_run(a, static_cast<int>(digits));
  return ffi::Error::Success();
}

// x (R, K) f32 or int32 -> sign and mask words (R, Kw); which: bit 1 sign, bit 0 mask.
ffi::Error PackImpl(ffi::AnyBuffer x, ffi::Result<ffi::Buffer<ffi::U32>> sign,
                    ffi::Result<ffi::Buffer<ffi::U32>> mask, int64_t which) {
  auto xd = x.dimensions();
  if (xd.size() != 2) return ffi::Error::InvalidArgument("bnn_pack: x must be 2-D");
  const bool is_int = x.element_type() == ffi::DataType::S32;
  if (!is_int && x.element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("bnn_pack: x must be float32 or int32");
  int64_t rows = xd[0], k = xd[1], kw = (k + 31) / 32;
  uint32_t* s = (which & 2) ? sign->typed_data() : nullptr;
  uint32_t* m = (which & 1) ? mask->typed_data() : nullptr;
  const void* xp = x.untyped_data();
  const bool avx2 = use_avx2();
  int64_t block = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k));
  int64_t n_blocks = (rows + block - 1) / block;
  auto task = [&](int64_t t) {
    int64_t r0 = t * block, r1 = std::min(rows, r0 + block);
    if (is_int) {
      const int32_t* xi = static_cast<const int32_t*>(xp);
      if (avx2) pack_rows_i32_avx2(xi, r0, r1, k, kw, s, m);
      else pack_rows_scalar<int32_t>(xi, r0, r1, k, kw, s, m);
    } else {
      const float* xf = static_cast<const float*>(xp);
      if (avx2) pack_rows_avx2(xf, r0, r1, k, kw, s, m);
      else pack_rows_scalar<float>(xf, r0, r1, k, kw, s, m);
    }
  };
  if (rows * k < (1 << 15)) {
    for (int64_t t = 0; t < n_blocks; ++t) task(t);
  } else {
    Pool::get().run(n_blocks, task);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BnnGemm, GemmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("has")
                                  .Attr<int64_t>("length"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BnnGemv, GemvImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("ternary")
                                  .Attr<int64_t>("method"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BnnPack, PackImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Attr<int64_t>("which"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BnnTritGemv, TritImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("digits"));
