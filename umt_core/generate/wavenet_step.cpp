// Incremental WaveNet decoding on the CPU: the whole per-sample step of every
// layer, for a chunk of samples, in one call. Plain C ABI (loaded with ctypes).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define UMT_AVX2 1
#endif

extern "C" {
// Weights of D decoders, packed in panels of 16 outputs: a matrix of N outputs and
// K inputs is stored as [ceil(N/16)][K][16] (zero padded), float or bf16 bits.
struct UmtWeights {
  int64_t decoders, residual, skip, kernel, layers;
  int64_t conv_panels, out_panels, skip_panels;
  int64_t bf16;
  const float* first_w;   // (D, kernel, R): first causal conv, tap-major
  const float* first_b;   // (D, R)
  const void* skip0_p;    // (D, skip_panels, R, 16)
  const float* skip0_b;   // (D, skip_panels*16)
  const void* conv_p;     // (D, layers, conv_panels, kernel*R, 16): taps oldest..current
  const void* out_p;      // (D, layers, out_panels, R, 16): [residual; skip] outputs
  const float* out_b;     // (D, layers, out_panels*16)
  const void* fc_p;       // (D, skip_panels, S, 16)
  const void* logit_p;    // (D, 16, S, 16)
  const float* logit_b;   // (D, 256)
};

// One chunk of `steps` samples for D*B rows (row = decoder * B + clip).
struct UmtChunk {
  int64_t batch, steps, frames, t0, threads;
  const float* cond;          // (rows, frames, layers, 2R), causal conv bias included
  const float* head;          // (rows, frames, S), fc bias included
  const int64_t* frame_of_step;  // (steps,) index into `frames`
  float* ring;                // (rows, ring_total, R): past inputs of each layer
  int64_t ring_total;
  const int64_t* ring_offset; // (layers,)
  const int64_t* ring_length; // (layers,) = (kernel - 1) * dilation
  const int64_t* dilation;    // (layers,)
  float* inputs;              // (rows, kernel): scaled past inputs, current last
  const float* uniforms;      // (rows, steps) in [0, 1), or null for greedy/forced
  const int64_t* forced;      // (rows, steps) teacher-forced codes, or null
  float inv_temperature;
  int64_t greedy;
  int64_t* out_codes;         // (rows, steps)
  float* out_logits;          // (rows, steps, 256) or null
  int64_t share_panels;       // 1: threads may share the matmuls of few rows; 0: never
  int64_t* report;            // out: [threads shared panels, sharing was given up]
};
}

namespace {

using bf16 = uint16_t;
constexpr int kClasses = 256;
constexpr int64_t kMaxTile = 6;

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) {
  uint32_t u = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

#ifdef UMT_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const bf16* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// C[MR][16*NP] += A[MR][K] * panels; `ps` = elements per panel.
template <int MR, int NP, typename W>
inline void tile(const float* A, int64_t lda, int64_t K, const W* P, int64_t ps, float* C,
                 int64_t ldc, const float* C0, int64_t ldc0) {
  __m256 acc[MR][2 * NP];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < 2 * NP; ++j) acc[r][j] = _mm256_loadu_ps(C0 + r * ldc0 + 8 * j);
  for (int64_t k = 0; k < K; ++k) {
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
      const W* w = P + p * ps + k * 16;
      __m256 w0 = load8(w), w1 = load8(w + 8);
      // Short tiles: keep each weight vector in a register for all rows (otherwise the
      // compiler folds one load per row into the FMAs, and loads become the limit).
      if constexpr (MR <= 4) __asm__("" : "+x"(w0), "+x"(w1));
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
        acc[r][2 * p] = _mm256_fmadd_ps(a, w0, acc[r][2 * p]);
        acc[r][2 * p + 1] = _mm256_fmadd_ps(a, w1, acc[r][2 * p + 1]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < 2 * NP; ++j) _mm256_storeu_ps(C + r * ldc + 8 * j, acc[r][j]);
}

// e^x for |x| < 88, Cephes-style range reduction and polynomial (rel. error ~1e-7).
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
#else
template <int MR, int NP, typename W>
inline void tile(const float* A, int64_t lda, int64_t K, const W* P, int64_t ps, float* C,
                 int64_t ldc, const float* C0, int64_t ldc0) {
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) {
      float acc[16];
      for (int c = 0; c < 16; ++c) acc[c] = C0[r * ldc0 + 16 * p + c];
      const W* w = P + p * ps;
      for (int64_t k = 0; k < K; ++k) {
        const float a = A[r * lda + k];
        for (int c = 0; c < 16; ++c) acc[c] += a * to_float(w[k * 16 + c]);
      }
      for (int c = 0; c < 16; ++c) C[r * ldc + 16 * p + c] = acc[c];
    }
}
#endif

// C[m][16*np] = C0[m][16*np] + A[m][K] * panels, for m <= kMaxTile rows (C0 may be C).
template <typename W>
void block(int64_t m, const float* A, int64_t lda, int64_t K, const W* P, int64_t np, float* C,
           int64_t ldc, const float* C0, int64_t ldc0) {
  const int64_t ps = K * 16;
  int64_t p = 0;
#define UMT_TILE(MR, NP) \
  tile<MR, NP>(A, lda, K, P + p * ps, ps, C + p * 16, ldc, C0 + p * 16, ldc0)
  switch (m) {
    case 1:
      for (; p + 4 <= np; p += 4) UMT_TILE(1, 4);
      for (; p < np; ++p) UMT_TILE(1, 1);
      break;
    case 2:
      for (; p + 2 <= np; p += 2) UMT_TILE(2, 2);
      for (; p < np; ++p) UMT_TILE(2, 1);
      break;
    case 3:
      for (; p < np; ++p) UMT_TILE(3, 1);
      break;
    case 4:
      for (; p < np; ++p) UMT_TILE(4, 1);
      break;
    case 5:
      for (; p < np; ++p) UMT_TILE(5, 1);
      break;
    default:
      for (; p < np; ++p) UMT_TILE(6, 1);
      break;
  }
#undef UMT_TILE
}

// Relative time of a tile of m rows per panel (m / GMAC/s measured on a Zen 3 core):
// tiles of 5-6 rows are the most efficient per row, tiles of 1-2 the cheapest alone.
constexpr int64_t kTileCost[kMaxTile + 1] = {0, 43, 48, 81, 103, 101, 120};

// Tile boundaries for `rows` rows with the lowest total cost (a small dynamic program).
std::vector<int64_t> plan_tiles(int64_t rows) {
  std::vector<int64_t> best(rows + 1, 0), last(rows + 1, 0);
  for (int64_t n = 1; n <= rows; ++n) {
    best[n] = -1;
    for (int64_t m = 1; m <= std::min(n, kMaxTile); ++m) {
      const int64_t cost = best[n - m] + kTileCost[m];
      if (best[n] < 0 || cost < best[n]) best[n] = cost, last[n] = m;
    }
  }
  std::vector<int64_t> bounds{rows};
  for (int64_t n = rows; n > 0; n -= last[n]) bounds.push_back(n - last[n]);
  std::reverse(bounds.begin(), bounds.end());
  return bounds;  // 0 = b[0] < b[1] < ... < b[k] = rows
}

// C[rows][16*np] += A[rows][K] * panels, rows tiled as `bounds`. Blocks of 4 panels
// (64 outputs) outside, tiles inside: each block of weights is read from memory once
// and reused from cache by every tile.
// With C0, the sums start from C0 (row stride ldc0) instead of C's own values.
template <typename W>
void gemm(const std::vector<int64_t>& bounds, const float* A, int64_t lda, int64_t K,
          const W* P, int64_t np, float* C, int64_t ldc, const float* C0 = nullptr,
          int64_t ldc0 = 0) {
  const int64_t ps = K * 16;
  if (!C0) C0 = C, ldc0 = ldc;
  for (int64_t p0 = 0; p0 < np; p0 += 4) {
    const int64_t nb = std::min<int64_t>(4, np - p0);
    for (size_t i = 0; i + 1 < bounds.size(); ++i) {
      const int64_t r = bounds[i], m = bounds[i + 1] - r;
      block<W>(m, A + r * lda, lda, K, P + p0 * ps, nb, C + r * ldc + p0 * 16, ldc,
               C0 + r * ldc0 + p0 * 16, ldc0);
    }
  }
}

// The gate for channels [c0, c1) only.
inline void gate_part(const float* h, int64_t R, int64_t c0, int64_t c1, float* g) {
  int64_t c = c0;
#ifdef UMT_AVX2
  const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (; c + 8 <= c1; c += 8) {
    __m256 a = _mm256_loadu_ps(h + c), b = _mm256_loadu_ps(h + R + c);
    __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_xor_ps(a, sign))));
    __m256 e = exp8(_mm256_mul_ps(b, _mm256_set1_ps(-2.0f)));
    __m256 t = _mm256_sub_ps(_mm256_div_ps(two, _mm256_add_ps(one, e)), one);
    _mm256_storeu_ps(g + c, _mm256_mul_ps(s, t));
  }
#endif
  for (; c < c1; ++c) g[c] = std::tanh(h[R + c]) / (1.0f + std::exp(-h[c]));
}

// g[c] = sigmoid(h[c]) * tanh(h[R + c])
inline void gate(const float* h, int64_t R, float* g) { gate_part(h, R, 0, R, g); }

// Next code from 256 logits: greedy = first arg max; otherwise inverse CDF of
// softmax(logits / T) at u (cumulative sums in double, as torch.cumsum on CPU).
int64_t pick(const float* logits, bool greedy, float u, float inv_t, float* e) {
  int64_t best = 0;
  float m = logits[0];
  for (int i = 1; i < kClasses; ++i)
    if (logits[i] > m) { m = logits[i]; best = i; }
  if (greedy) return best;
  int i = 0;
#ifdef UMT_AVX2
  const __m256 mv = _mm256_set1_ps(m), it = _mm256_set1_ps(inv_t);
  for (; i < kClasses; i += 8)
    _mm256_storeu_ps(e + i, exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(logits + i), mv), it)));
#endif
  for (; i < kClasses; ++i) e[i] = std::exp((logits[i] - m) * inv_t);
  double run = 0.0;
  for (i = 0; i < kClasses; ++i) { run += e[i]; e[i] = static_cast<float>(run); }
  const float thr = u * e[kClasses - 1];
  int64_t code = 0;
  while (code < kClasses - 1 && e[code] < thr) ++code;
  return code;
}

// A spinning barrier for the threads of a team. A wait that spins too long yields
// the core and counts as slow: the team then gives up sharing (see team_run).
class Barrier {
 public:
  explicit Barrier(int64_t n) : n_(n) {}
  void wait() {
    const int64_t gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    for (int64_t spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < 4000) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        if (spins == 4000) slow_.fetch_add(1, std::memory_order_relaxed);
        std::this_thread::yield();
      }
    }
  }
  int64_t generations() const { return gen_.load(std::memory_order_acquire); }
  int64_t slow() const { return slow_.load(std::memory_order_relaxed); }

 private:
  const int64_t n_;
  std::atomic<int64_t> count_{0}, gen_{0}, slow_{0};
};

// Runs of consecutive rows that share a decoder (and so its weights).
struct Group {
  int64_t first, rows, dec;     // first: index within the team's rows
  std::vector<int64_t> tiles;  // tile boundaries of the group's rows (plan_tiles)
};

// Rows [row0, row1) of the D*B streams, for every step of the chunk, computed by a
// team of `size` threads. With one thread it owns everything. With several, each
// computes a share of every matmul's output panels for all the rows (so each reads
// only its share of the weights), the gate of its channels and the sampling of its
// share of the rows; barriers separate the stages that read what others wrote.
struct Team {
  Team(int64_t r0, int64_t r1, int64_t n_threads) : row0(r0), row1(r1), size(n_threads), bar(n_threads) {}
  int64_t row0, row1, size;
  Barrier bar;
  std::atomic<bool> solo{false};  // set when sharing turned out slow: member 0 goes on alone
  std::vector<Group> groups;
  std::vector<float> acc, g, hh, lg;  // shared: [residual | skip], gate, fc output, logits
  std::vector<std::vector<float>> A, h, scratch;  // per member: conv input, conv output
};

// [begin, end) of `n` items for member j of `size`.
inline void share(int64_t n, int64_t j, int64_t size, int64_t* begin, int64_t* end) {
  *begin = n * j / size;
  *end = n * (j + 1) / size;
}

template <typename W>
void team_run(const UmtWeights& w, const UmtChunk& c, Team& tm, int64_t j) {
  const int64_t R = w.residual, S = w.skip, KK = w.kernel, L = w.layers;
  const int64_t Pc = w.conv_panels, Po = w.out_panels, Ps = w.skip_panels;
  const int64_t accw = std::max(Po * 16, R + Ps * 16);  // [residual | skip | padding]
  const int64_t aw = std::max({KK * R, R, S});
  const int64_t hw = Pc * 16, hhw = Ps * 16;
  const W* skip0_p = static_cast<const W*>(w.skip0_p);
  const W* conv_p = static_cast<const W*>(w.conv_p);
  const W* out_p = static_cast<const W*>(w.out_p);
  const W* fc_p = static_cast<const W*>(w.fc_p);
  const W* logit_p = static_cast<const W*>(w.logit_p);
  int64_t P = tm.size;
  float* acc = tm.acc.data();
  float* g = tm.g.data();
  float* hh = tm.hh.data();
  float* lg = tm.lg.data();
  std::vector<float>& A = tm.A[j];
  std::vector<float>& h = tm.h[j];
  std::vector<float>& scratch = tm.scratch[j];

  // This member's output panels. Conv panels come in pairs (sigmoid half, tanh half of
  // the same channels) so that the gate needs no other member's output; a team of
  // several threads is only formed when R is a multiple of 16.
  int64_t half, c0, c1, o0, o1, s0, s1, l0, l1;
  auto reshare = [&]() {
    half = P > 1 ? R / 16 : Pc;
    share(half, j, P, &c0, &c1);
    share(Po, j, P, &o0, &o1);
    share(Ps, j, P, &s0, &s1);
    share(16, j, P, &l0, &l1);
  };
  reshare();
  auto sync = [&]() { if (P > 1) tm.bar.wait(); };

  for (int64_t i = 0; i < c.steps; ++i) {
    if (P > 1 && i % 8 == 0 && i > 0) {
      // On a busy machine a member is often descheduled and every barrier waits for
      // it; then sharing costs more than it gives, and member 0 continues alone.
      if (j == 0 && tm.bar.slow() * 50 > tm.bar.generations()) tm.solo = true;
      tm.bar.wait();
      if (tm.solo) {
        if (j > 0) return;
        P = 1;
        reshare();
      }
    }
    const int64_t t = c.t0 + i, f = c.frame_of_step[i];
    for (const Group& gr : tm.groups) {
      int64_t r0, r1;  // this member's rows of the group
      share(gr.rows, j, P, &r0, &r1);
      float* a0 = acc + gr.first * accw;
      float* A0 = A.data() + gr.first * aw;
      float* h0 = h.data() + gr.first * hw;
      float* g0 = g + gr.first * R;
      float* hh0 = hh + gr.first * hhw;
      float* lg0 = lg + gr.first * kClasses;

      // First causal conv (one input channel), then its skip projection.
      const float* fw = w.first_w + gr.dec * KK * R;
      const float* fb = w.first_b + gr.dec * R;
      for (int64_t r = r0; r < r1; ++r) {
        const float* x = c.inputs + (tm.row0 + gr.first + r) * KK;
        float* a = a0 + r * accw;
        for (int64_t ch = 0; ch < R; ++ch) {
          float s = fb[ch];
          for (int64_t k = 0; k < KK; ++k) s += fw[k * R + ch] * x[k];
          a[ch] = s;
        }
        std::memcpy(a + R, w.skip0_b + gr.dec * hhw, hhw * sizeof(float));
      }
      sync();
      gemm<W>(gr.tiles, a0, accw, R, skip0_p + (gr.dec * Ps + s0) * R * 16, s1 - s0,
              a0 + R + s0 * 16, accw);

      for (int64_t l = 0; l < L; ++l) {
        const int64_t off = c.ring_offset[l], len = c.ring_length[l], dil = c.dilation[l];
        const int64_t wslot = t % len, dl = gr.dec * L + l;
        const W* cp = conv_p + dl * Pc * KK * R * 16;
        // The conv sums start from the layer's conditioning, read in place when its rows
        // are whole panels (2R a multiple of 16), else copied first.
        const bool in_place = (2 * R) % 16 == 0;
        const int64_t row_first = tm.row0 + gr.first;
        const float* cond0 = c.cond + ((row_first * c.frames + f) * L + l) * 2 * R;
        const int64_t ldcond = c.frames * L * 2 * R;
        const bool next = l + 1 < L;
        const int64_t noff = next ? c.ring_offset[l + 1] : 0, nlen = next ? c.ring_length[l + 1] : 1;
        const int64_t nslot = next ? (((t - c.dilation[l + 1]) % nlen) + nlen) % nlen : 0;
        for (int64_t r = 0; r < gr.rows; ++r) {
          const int64_t row = row_first + r;
          const float* ring = c.ring + (row * c.ring_total + off) * R;
          float* Ar = A0 + r * aw;
          for (int64_t k = 0; k + 1 < KK; ++k) {
            const int64_t slot = (((t - (KK - 1 - k) * dil) % len) + len) % len;
            std::memcpy(Ar + k * R, ring + slot * R, R * sizeof(float));
          }
          std::memcpy(Ar + (KK - 1) * R, a0 + r * accw, R * sizeof(float));
          if (next) {  // the next layer's nearest tap, from memory while this layer computes
            const char* p = reinterpret_cast<const char*>(
                c.ring + (row * c.ring_total + noff + nslot) * R);
            for (int64_t b = 0; b < R * 4; b += 64) __builtin_prefetch(p + b);
          }
          if (!in_place) std::memcpy(h0 + r * hw, cond0 + r * ldcond, 2 * R * sizeof(float));
        }
        const float* init = in_place ? cond0 : h0;
        const int64_t ldinit = in_place ? ldcond : hw;
        if (P == 1) {
          gemm<W>(gr.tiles, A0, aw, KK * R, cp, Pc, h0, hw, init, ldinit);
          for (int64_t r = 0; r < gr.rows; ++r) gate(h0 + r * hw, R, g0 + r * R);
        } else {
          gemm<W>(gr.tiles, A0, aw, KK * R, cp + c0 * KK * R * 16, c1 - c0, h0 + c0 * 16, hw,
                  init + c0 * 16, ldinit);
          gemm<W>(gr.tiles, A0, aw, KK * R, cp + (half + c0) * KK * R * 16, c1 - c0,
                  h0 + R + c0 * 16, hw, init + R + c0 * 16, ldinit);
          for (int64_t r = 0; r < gr.rows; ++r)
            gate_part(h0 + r * hw, R, c0 * 16, c1 * 16, g0 + r * R);
        }
        sync();  // the gate is complete, and every member has read the ring
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t row = tm.row0 + gr.first + r;
          std::memcpy(c.ring + (row * c.ring_total + off + wslot) * R, A0 + r * aw + (KK - 1) * R,
                      R * sizeof(float));
        }
        const float* ob = w.out_b + dl * Po * 16;
        for (int64_t r = 0; r < gr.rows; ++r) {
          float* a = a0 + r * accw;
          for (int64_t ch = o0 * 16; ch < o1 * 16; ++ch) a[ch] += ob[ch];
        }
        gemm<W>(gr.tiles, g0, R, R, out_p + (dl * Po + o0) * R * 16, o1 - o0, a0 + o0 * 16, accw);
        sync();  // the residual is complete
      }

      // Head: relu -> fc (+ conditioning) -> relu -> logits; then the next code.
      for (int64_t r = 0; r < gr.rows; ++r) {
        const int64_t row = tm.row0 + gr.first + r;
        for (int64_t ch = 0; ch < S; ++ch) A0[r * aw + ch] = std::max(a0[r * accw + R + ch], 0.0f);
        std::memcpy(hh0 + r * hhw + s0 * 16, c.head + (row * c.frames + f) * S + s0 * 16,
                    (std::min(S, s1 * 16) - std::min(S, s0 * 16)) * sizeof(float));
        for (int64_t ch = std::max(S, s0 * 16); ch < s1 * 16; ++ch) hh0[r * hhw + ch] = 0.0f;
      }
      gemm<W>(gr.tiles, A0, aw, S, fc_p + (gr.dec * Ps + s0) * S * 16, s1 - s0, hh0 + s0 * 16, hhw);
      sync();
      for (int64_t r = 0; r < gr.rows; ++r) {
        for (int64_t ch = 0; ch < S; ++ch) A0[r * aw + ch] = std::max(hh0[r * hhw + ch], 0.0f);
        std::memcpy(lg0 + r * kClasses + l0 * 16, w.logit_b + gr.dec * kClasses + l0 * 16,
                    (l1 - l0) * 16 * sizeof(float));
      }
      gemm<W>(gr.tiles, A0, aw, S, logit_p + (gr.dec * 16 + l0) * S * 16, l1 - l0,
              lg0 + l0 * 16, kClasses);
      sync();
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row = tm.row0 + gr.first + r;
        const float* logits = lg0 + r * kClasses;
        if (c.out_logits)
          std::memcpy(c.out_logits + (row * c.steps + i) * kClasses, logits,
                      kClasses * sizeof(float));
        int64_t code;
        if (c.forced) {
          code = c.forced[row * c.steps + i];
        } else {
          const float u = c.uniforms ? c.uniforms[row * c.steps + i] : 0.0f;
          code = pick(logits, c.greedy || !c.uniforms, u, c.inv_temperature, scratch.data());
        }
        c.out_codes[row * c.steps + i] = code;
        float* x = c.inputs + row * KK;
        for (int64_t k = 0; k + 1 < KK; ++k) x[k] = x[k + 1];
        x[KK - 1] = static_cast<float>(code) / 255.0f - 0.5f;
      }
    }
  }
}

}  // namespace

extern "C" int umt_run_chunk(const UmtWeights* w, const UmtChunk* c) {
  const int64_t rows = w->decoders * c->batch;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(c->threads, 64));
  // Few rows per thread: one team shares every matmul's panels (each thread reads a
  // share of the weights). Many rows: one thread per share of the rows.
  const bool panels = c->share_panels && threads > 1 && w->residual % 16 == 0 &&
                      rows < kMaxTile * threads;
  const int64_t teams = panels ? 1 : std::min(threads, rows);
  const int64_t members = panels ? threads : 1;
  std::vector<std::unique_ptr<Team>> team;
  try {  // every buffer is allocated here: the workers themselves cannot fail
    const int64_t R = w->residual, S = w->skip, KK = w->kernel;
    const int64_t Ps = w->skip_panels, Po = w->out_panels, Pc = w->conv_panels;
    const int64_t accw = std::max(Po * 16, R + Ps * 16), aw = std::max({KK * R, R, S});
    for (int64_t u = 0; u < teams; ++u) {
      int64_t r0, r1;
      share(rows, u, teams, &r0, &r1);
      auto tm = std::make_unique<Team>(r0, r1, members);
      for (int64_t r = r0; r < r1;) {
        const int64_t dec = r / c->batch, end = std::min(r1, (dec + 1) * c->batch);
        tm->groups.push_back({r - r0, end - r, dec, plan_tiles(end - r)});
        r = end;
      }
      const int64_t n = r1 - r0;
      tm->acc.assign(n * accw, 0.0f);
      tm->g.assign(n * R, 0.0f);
      tm->hh.assign(n * Ps * 16, 0.0f);
      tm->lg.assign(n * kClasses, 0.0f);
      tm->A.assign(members, std::vector<float>(n * aw, 0.0f));
      tm->h.assign(members, std::vector<float>(n * Pc * 16, 0.0f));
      tm->scratch.assign(members, std::vector<float>(kClasses, 0.0f));
      team.push_back(std::move(tm));
    }
  } catch (...) {
    return 1;
  }
  // Workers wait for every thread to exist before starting (a team whose member
  // could not be started must not run: the others would wait at a barrier forever).
  std::atomic<int> go{0};
  auto body = [&](int64_t u, int64_t j) {
    while (go.load(std::memory_order_acquire) == 0) std::this_thread::yield();
    if (go.load(std::memory_order_acquire) < 0) return;
    if (w->bf16) team_run<bf16>(*w, *c, *team[u], j);
    else team_run<float>(*w, *c, *team[u], j);
  };
  std::vector<std::thread> workers;
  int status = 0;
  try {
    for (int64_t k = 1; k < teams * members; ++k)
      workers.emplace_back(body, k / members, k % members);
  } catch (...) {
    status = 1;
  }
  go.store(status ? -1 : 1, std::memory_order_release);
  if (!status) body(0, 0);
  for (auto& th : workers) th.join();
  if (c->report) {
    c->report[0] = panels;
    c->report[1] = panels && team[0]->solo.load();
  }
  return status;
}

extern "C" int umt_abi_version() { return 2; }
