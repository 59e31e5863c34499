// The ERNIE-4.5 forward step in WebAssembly SIMD, run by every worker thread
// at once over one shared memory. `wasm_runner.ts` lays out the weights, the
// KV pool and the step buffers and fills a `Model`; each worker calls
// `run_step(model, thread)` and the threads meet at a barrier between ops.
//
// Batch invariance: every output is a sum over k in one fixed order (sequential
// fused multiply-adds for matmuls, fixed lane order for norms and dots) that
// does not depend on how many rows are in the step, which tile a row lands in,
// or how the work is split between threads.
//
// Build: `deno run -A tools/build_wasm.ts` (clang-19, wasm-ld-19).

#include <stddef.h>
#include <stdint.h>
#include <wasm_simd128.h>

typedef uint32_t u32;

// A weight matrix y = x·Wᵀ, W (n, k), repacked into panels of 8 output columns.
// Panel p, step k holds lane group A (4 columns) and B (4 columns):
//   bf16: 4 u32 words, word j = bits(A_j) << 16 | bits(B_j)   (16 bytes per k)
//   f32:  A_0..A_3 then B_0..B_3                               (32 bytes per k)
// For "plain" weights A_j = column 8p + j, B_j = column 8p + 4 + j; for the
// fused gate_up weight A_j = gate column 4p + j, B_j = up column 4p + j.
typedef struct {
  const void *data;
  u32 n;       // output columns (for gate_up: intermediate size)
  u32 k;       // input width
  u32 panels;  // ceil(n / 8), or ceil(n / 4) for gate_up
  u32 bf16;    // 1: bf16 words, 0: f32
} Weight;

typedef struct {
  const float *input_norm;  // (H)
  Weight qkv;               // ((HQ + 2·HKV)·D, H)
  Weight o;                 // (H, HQ·D)
  const float *post_norm;   // (H)
  Weight gate_up;           // (2·I, H) as gate/up panels
  Weight down;              // (H, I)
  float *k_cache;           // (slots, HKV, D)
  float *v_cache;           // (slots, HKV, D)
} Layer;

// How one logit row picks its token: shaders/sample.wgsl's `Row`, packed by
// engine/gpu/sampling.ts (packRows) for both backends.
typedef struct SampleRow {
  u32 mode;           // 0: the host samples from the logits (skip), 1: greedy, 2: random
  float temperature;
  u32 top_k;          // 0 (or ≥ valid_vocab): off
  float top_p;        // ≥ 1: off
  float min_p;        // 0: off
  float u;            // uniform in [0, 1) from the request's key
  u32 edit_start, edit_count;
  u32 mask_row;       // the row's grammar mask in `masks`, or NONE
  u32 pad[3];
} SampleRow;

// logit' = rep(logit + bias) − sub, rep(v) = v / rep when v > 0 else v · rep.
typedef struct Edit {
  u32 id;
  float bias, rep, sub;
} Edit;

// Filled by wasm_runner.ts (MODEL_FIELDS there lists the same fields in order).
typedef struct {
  u32 threads;
  u32 hidden, inter, layers, heads, kv_heads, head_dim, vocab;
  float eps, pos_scale, attn_scale;
  u32 block_size, max_blocks, valid_vocab;
  const float *inv_freq;  // (D/2)
  const Weight *embed;    // the embedding as panels (V, H)
  const Weight *lm_head;  // the embedding when tied
  const float *norm;      // (H)
  const Layer *layer;     // (L)
  // Step buffers.
  float *x;               // (T, H) residual stream
  float *normed;          // (T, H)
  float *qkv;             // (T, (HQ + 2·HKV)·D)
  float *attn;            // (T, HQ·D)
  float *act;             // (T, I)
  float *final_rows;      // (R, H) final-normed output rows
  float *logits;          // (L_rows, V)
  float *scratch;         // (threads, scratch_floats) per-thread attention scratch
  u32 scratch_floats;
  // The step, written by the main thread before waking the workers.
  u32 tokens, rows, logit_rows;
  u32 want_ids;           // 0: logits only, 1: argmax ids, 2: ids drawn per sample_rows
  const u32 *ids;         // (T)
  const u32 *positions;   // (T)
  const u32 *slots;       // (T) KV slot of each token
  const u32 *seq_of;      // (T) block-table row of each token
  const u32 *block_table; // (S, max_blocks)
  const u32 *out_rows;    // (R) token index of each output row
  u32 *out_ids;           // (L_rows) chosen ids
  // Barrier state and the next unclaimed work item of the current op (atomics).
  u32 bar_count, bar_gen, work;
  // Profiling (`--profile`): when set, thread 0 adds each op's milliseconds, from the
  // barrier before it to the barrier after it, to prof[op] (see enum Op).
  double *prof;
  // Sampling on the worker threads (want_ids == 2): each logit row's SampleRow, the
  // rows' logit edits, and the grammar masks (mask_words words per masked row).
  const struct SampleRow *sample_rows;
  const struct Edit *edits;
  const u32 *masks;
  u32 mask_words;
} Model;

u32 model_fields(void) { return sizeof(Model) / 4; }
u32 weight_fields(void) { return sizeof(Weight) / 4; }
u32 layer_fields(void) { return sizeof(Layer) / 4; }
u32 sample_row_fields(void) { return sizeof(SampleRow) / 4; }

// ---------------------------------------------------------------- threads

// Waits until every thread has arrived; the last to arrive resets the work counter
// for the next op (nobody claims from it before the barrier releases).
static void barrier(Model *m) {
  if (m->threads == 1) {
    m->work = 0;
    return;
  }
  u32 gen = __atomic_load_n(&m->bar_gen, __ATOMIC_ACQUIRE);
  if (__atomic_add_fetch(&m->bar_count, 1, __ATOMIC_ACQ_REL) == m->threads) {
    __atomic_store_n(&m->work, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&m->bar_count, 0, __ATOMIC_RELAXED);
    __atomic_add_fetch(&m->bar_gen, 1, __ATOMIC_RELEASE);
    __builtin_wasm_memory_atomic_notify((int *)&m->bar_gen, 0xffffffffu);
    return;
  }
  for (int spin = 0; spin < 20000; spin++) {
    if (__atomic_load_n(&m->bar_gen, __ATOMIC_ACQUIRE) != gen) return;
  }
  while (__atomic_load_n(&m->bar_gen, __ATOMIC_ACQUIRE) == gen) {
    __builtin_wasm_memory_atomic_wait32((int *)&m->bar_gen, (int)gen, -1);
  }
}

// Claims the next `chunk` items [lo, hi) of an op's n items; 0 when none are left.
// Threads take work as they come free, so one that the OS has descheduled delays a
// barrier by one chunk, not by its whole share. Which thread computes an item
// never changes its result.
static inline int claim(Model *m, u32 n, u32 chunk, u32 *lo, u32 *hi) {
  u32 c = __atomic_fetch_add(&m->work, chunk, __ATOMIC_RELAXED);
  if (c >= n) return 0;
  *lo = c;
  *hi = n - c < chunk ? n : c + chunk;
  return 1;
}

// ---------------------------------------------------------------- math

// exp(x) for f32 lanes: 2^n · p(r), r = x − n·ln2, |r| ≤ ln2/2 (Cephes expf polynomial);
// 0 below −87 (e^−87 ≈ 1.6e−38, the bottom of the normal range): products of such tiny
// weights are subnormal, and x86 takes a slow path for every one of them (softmax over
// a long context made attention 5–10× slower).
static inline v128_t vexp(v128_t x) {
  const v128_t tiny = wasm_f32x4_lt(x, wasm_f32x4_splat(-87.0f));
  x = wasm_f32x4_min(wasm_f32x4_max(x, wasm_f32x4_splat(-87.0f)), wasm_f32x4_splat(88.0f));
  v128_t n = wasm_f32x4_nearest(wasm_f32x4_mul(x, wasm_f32x4_splat(1.44269504088896341f)));
  v128_t r = wasm_f32x4_sub(x, wasm_f32x4_mul(n, wasm_f32x4_splat(0.693359375f)));
  r = wasm_f32x4_sub(r, wasm_f32x4_mul(n, wasm_f32x4_splat(-2.12194440e-4f)));
  v128_t p = wasm_f32x4_splat(1.9875691500e-4f);
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.3981999507e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(8.3334519073e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(4.1665795894e-2f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.6666665459e-1f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(5.0000001201e-1f));
  p = wasm_f32x4_add(wasm_f32x4_mul(wasm_f32x4_mul(p, r), r), r);
  p = wasm_f32x4_add(p, wasm_f32x4_splat(1.0f));
  v128_t e = wasm_i32x4_shl(wasm_i32x4_add(wasm_i32x4_trunc_sat_f32x4(n), wasm_i32x4_splat(127)), 23);
  return wasm_v128_andnot(wasm_f32x4_mul(p, e), tiny);
}

static inline float sexp(float x) { return wasm_f32x4_extract_lane(vexp(wasm_f32x4_splat(x)), 0); }

// silu(g)·u lane-wise.
static inline v128_t vswiglu(v128_t g, v128_t u) {
  v128_t den = wasm_f32x4_add(wasm_f32x4_splat(1.0f), vexp(wasm_f32x4_neg(g)));
  return wasm_f32x4_mul(wasm_f32x4_div(g, den), u);
}

// sin and cos of an angle in radians, in double precision: reduce to [−π/4, π/4]
// by quarter turns, then Taylor series (error < 1e-16 there).
static void sincos(double a, double *s, double *c) {
  const double half_pi_hi = 1.5707963267341256, half_pi_lo = 6.077100506506192e-11;
  double q = __builtin_nearbyint(a * 0.6366197723675814);
  double y = (a - q * half_pi_hi) - q * half_pi_lo;
  double y2 = y * y;
  double sn = y * (1 + y2 * (-1.0 / 6 + y2 * (1.0 / 120 + y2 * (-1.0 / 5040 + y2 * (1.0 / 362880 +
              y2 * (-1.0 / 39916800 + y2 * (1.0 / 6227020800.0)))))));
  double cs = 1 + y2 * (-0.5 + y2 * (1.0 / 24 + y2 * (-1.0 / 720 + y2 * (1.0 / 40320 +
              y2 * (-1.0 / 3628800 + y2 * (1.0 / 479001600.0 + y2 * (-1.0 / 87178291200.0)))))));
  int quadrant = (int)((long long)q & 3);
  switch (quadrant) {
    case 0: *s = sn; *c = cs; break;
    case 1: *s = cs; *c = -sn; break;
    case 2: *s = -sn; *c = -cs; break;
    default: *s = -cs; *c = sn; break;
  }
}

// a·b + c rounded as the vector kernels round it (relaxed madd; wasm has no scalar fma).
static inline float fmadd(float a, float b, float c) {
  return wasm_f32x4_extract_lane(
      wasm_f32x4_relaxed_madd(wasm_f32x4_splat(a), wasm_f32x4_splat(b), wasm_f32x4_splat(c)), 0);
}

// Sum of x[0..n) · y[0..n): four lanes in order, then lanes 0+1+2+3, then the tail.
static inline float dot(const float *x, const float *y, u32 n) {
  v128_t acc = wasm_f32x4_splat(0);
  u32 i = 0;
  for (; i + 4 <= n; i += 4) {
    acc = wasm_f32x4_relaxed_madd(wasm_v128_load(x + i), wasm_v128_load(y + i), acc);
  }
  float s = (wasm_f32x4_extract_lane(acc, 0) + wasm_f32x4_extract_lane(acc, 1)) +
            (wasm_f32x4_extract_lane(acc, 2) + wasm_f32x4_extract_lane(acc, 3));
  for (; i < n; i++) s = fmadd(x[i], y[i], s);
  return s;
}

// ---------------------------------------------------------------- ops

// out[r] = w ⊙ x[src(r)] / sqrt(mean(x[src(r)]²) + eps) for rows split over threads.
static void rms_norm(Model *m, u32 t, const float *x, const float *w, float *out, u32 rows,
                     const u32 *gather) {
  u32 H = m->hidden;
  for (u32 lo, hi; claim(m, rows, 4, &lo, &hi);) for (u32 r = lo; r < hi; r++) {
    const float *src = x + (gather ? gather[r] : r) * H;
    float scale = 1.0f / __builtin_sqrtf(dot(src, src, H) / (float)H + m->eps);
    float *dst = out + r * H;
    for (u32 c = 0; c < H; c++) dst[c] = w[c] * (src[c] * scale);
  }
}

// Column c of a weight's packed panels at input index k (for the embedding gather).
static inline float weight_at(const Weight *w, u32 c, u32 k) {
  u32 p = c >> 3, j = c & 3, b = (c >> 2) & 1;
  if (w->bf16) {
    u32 word = ((const u32 *)w->data)[((size_t)p * w->k + k) * 4 + j];
    u32 bits = b ? word << 16 : word & 0xffff0000u;
    return __builtin_bit_cast(float, bits);
  }
  return ((const float *)w->data)[((size_t)p * w->k + k) * 8 + b * 4 + j];
}

static void embedding(Model *m, u32 t) {
  u32 H = m->hidden;
  for (u32 lo, hi; claim(m, m->tokens, 8, &lo, &hi);) for (u32 i = lo; i < hi; i++) {
    u32 id = m->ids[i];
    for (u32 c = 0; c < H; c++) m->x[i * H + c] = weight_at(m->embed, id, c);
  }
}

enum { STORE = 0, ADD = 1, SWIGLU = 2 };

// Writes one row's outputs of panel p: stored, added, or silu(gate)·up for gate_up.
static inline __attribute__((always_inline)) void store_tile(int mode, const Weight *w, u32 p,
                                                             float *o, v128_t a, v128_t b) {
  float av[4], bv[4];
  if (mode == SWIGLU) {
    wasm_v128_store(av, vswiglu(a, b));
    for (u32 j = 0; j < 4 && 4 * p + j < w->n; j++) o[4 * p + j] = av[j];
    return;
  }
  wasm_v128_store(av, a);
  wasm_v128_store(bv, b);
  for (u32 j = 0; j < 8 && 8 * p + j < w->n; j++) {
    float v = j < 4 ? av[j] : bv[j - 4];
    if (mode == ADD) o[8 * p + j] += v;
    else o[8 * p + j] = v;
  }
}

// Rows of x per register tile: 4 rows × 8 columns = 8 accumulators (6 rows, 12
// accumulators, measured no faster).
#define TILE_ROWS 4

// Hides a pointer from the optimiser, so that the loops below keep one pointer per
// stream, bumped once per iteration, and each load's constant offset folds into the
// load instead of an address add per load (LLVM's loop strength reduction otherwise
// rewrites the streams as one index plus a separate add for every access).
#define OPAQUE(p) __asm__("" : "+r"(p))

// One k step of a tile: the panel's 8 columns at pw, x[r] at xr[r][j].
#define TILE_STEP(j)                                                   \
  {                                                                    \
    v128_t wa, wb;                                                     \
    if (BF) {                                                          \
      v128_t v = wasm_v128_load(pw + 4 * (j));                         \
      wa = wasm_v128_and(v, hi);                                       \
      wb = wasm_i32x4_shl(v, 16);                                      \
    } else {                                                           \
      wa = wasm_v128_load(pf + 8 * (j));                               \
      wb = wasm_v128_load(pf + 8 * (j) + 4);                           \
    }                                                                  \
    _Pragma("clang loop unroll(full)") for (int r = 0; r < R; r++) {   \
      v128_t s = wasm_v128_load32_splat(xr[r] + (j));                  \
      a[r] = wasm_f32x4_relaxed_madd(wa, s, a[r]);                     \
      b[r] = wasm_f32x4_relaxed_madd(wb, s, b[r]);                     \
    }                                                                  \
  }

// One tile: R rows of x (R ≤ TILE_ROWS) against one panel, over the whole k range in
// order, two k steps per iteration (measured: 4 rows × 8 columns, one thread, 31 →
// 37 GFLOP/s; four steps per iteration or 5–6 rows spill registers and are slower).
// Each accumulator lane is one output and sees the same fused multiply-adds in the
// same order whatever R is, so a row's result does not depend on its tile.
static inline __attribute__((always_inline)) void tile(const int R, const int BF, const Weight *w,
                                                       u32 p, const float *x, u32 ldx, float *out,
                                                       u32 ldo, int mode) {
  v128_t a[TILE_ROWS], b[TILE_ROWS];
  const float *xr[TILE_ROWS];
#pragma clang loop unroll(full)
  for (int r = 0; r < TILE_ROWS; r++) {
    a[r] = b[r] = wasm_f32x4_splat(0);
    xr[r] = x + (r < R ? r : 0) * ldx;
  }
  const u32 K = w->k;
  const v128_t hi = wasm_i32x4_splat((int)0xffff0000u);
  const u32 *pw = (const u32 *)w->data + (size_t)p * K * 4;
  const float *pf = (const float *)w->data + (size_t)p * K * 8;
  u32 k = 0;
  for (; k + 2 <= K; k += 2) {
    TILE_STEP(0)
    TILE_STEP(1)
    if (BF) {
      pw += 8;
      OPAQUE(pw);
    } else {
      pf += 16;
      OPAQUE(pf);
    }
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++) {
      xr[r] += 2;
      OPAQUE(xr[r]);
    }
  }
  if (k < K) TILE_STEP(0)
  for (int r = 0; r < R; r++) store_tile(mode, w, p, out + r * ldo, a[r], b[r]);
}

// One k step of gemv4: x[k] against panel i's columns at pw[i] (or pf[i]).
#define GEMV_STEP(j)                                                   \
  {                                                                    \
    v128_t s = wasm_v128_load32_splat(xk + (j));                       \
    _Pragma("clang loop unroll(full)") for (int i = 0; i < 4; i++) {   \
      v128_t wa, wb;                                                   \
      if (BF) {                                                        \
        v128_t v = wasm_v128_load(pw[i] + 4 * (j));                    \
        wa = wasm_v128_and(v, hi);                                     \
        wb = wasm_i32x4_shl(v, 16);                                    \
      } else {                                                         \
        wa = wasm_v128_load(pf[i] + 8 * (j));                          \
        wb = wasm_v128_load(pf[i] + 8 * (j) + 4);                      \
      }                                                                \
      a[i] = wasm_f32x4_relaxed_madd(wa, s, a[i]);                     \
      b[i] = wasm_f32x4_relaxed_madd(wb, s, b[i]);                     \
    }                                                                  \
  }

// One row against 4 panels p..p+3: 8 independent accumulator chains instead of 2, so a
// single row (decode of one sequence) streams weights instead of waiting on the
// multiply-add latency. Each output still sums k in order from 0, as in `tile`.
static inline __attribute__((always_inline)) void gemv4(const int BF, const Weight *w, u32 p,
                                                        const float *x, float *out, int mode) {
  v128_t a[4], b[4];
  const u32 *pw[4];
  const float *pf[4];
  const u32 K = w->k;
#pragma clang loop unroll(full)
  for (int i = 0; i < 4; i++) {
    a[i] = b[i] = wasm_f32x4_splat(0);
    pw[i] = (const u32 *)w->data + (size_t)(p + i) * K * 4;
    pf[i] = (const float *)w->data + (size_t)(p + i) * K * 8;
  }
  const v128_t hi = wasm_i32x4_splat((int)0xffff0000u);
  const float *xk = x;
  u32 k = 0;
  for (; k + 2 <= K; k += 2) {
    GEMV_STEP(0)
    GEMV_STEP(1)
#pragma clang loop unroll(full)
    for (int i = 0; i < 4; i++) {
      if (BF) {
        pw[i] += 8;
        OPAQUE(pw[i]);
      } else {
        pf[i] += 16;
        OPAQUE(pf[i]);
      }
    }
    xk += 2;
    OPAQUE(xk);
  }
  if (k < K) GEMV_STEP(0)
  for (int i = 0; i < 4; i++) store_tile(mode, w, p + i, out, a[i], b[i]);
}

// Rows [0, rows) against panel p: full tiles, then one remainder tile.
static inline __attribute__((always_inline)) void matmul_panel(const int BF, const Weight *w, u32 p,
                                                               const float *x, u32 ldx, float *out,
                                                               u32 ldo, u32 rows, int mode) {
  u32 r = 0;
  for (; r + TILE_ROWS <= rows; r += TILE_ROWS) {
    tile(TILE_ROWS, BF, w, p, x + r * ldx, ldx, out + r * ldo, ldo, mode);
  }
  const float *xt = x + r * ldx;
  float *ot = out + r * ldo;
  switch (rows - r) {
    case 1: tile(1, BF, w, p, xt, ldx, ot, ldo, mode); break;
    case 2: tile(2, BF, w, p, xt, ldx, ot, ldo, mode); break;
    case 3: tile(3, BF, w, p, xt, ldx, ot, ldo, mode); break;
#if TILE_ROWS > 4
    case 4: tile(4, BF, w, p, xt, ldx, ot, ldo, mode); break;
    case 5: tile(5, BF, w, p, xt, ldx, ot, ldo, mode); break;
#endif
    default: break;
  }
}

static inline __attribute__((always_inline)) void matmul_bf(const int BF, Model *m, const Weight *w,
                                                            const float *x, u32 ldx, float *out,
                                                            u32 ldo, u32 rows, int mode) {
  // Panels per claim: one for many rows; for a few rows (gemv4 takes panels four at a
  // time) up to 16, but small enough that every thread of a many-core machine gets work
  // (an N = 1024 GEMV has 128 panels).
  u32 few = w->panels / (4 * m->threads) & ~3u;
  u32 chunk = rows >= 16 ? 1 : rows >= 4 ? 4 : few < 4 ? 4 : few > 16 ? 16 : few;
  // A lone last row (M = 1, 5, 9, ...) goes through gemv4, four panels at a time.
  u32 tiled = rows % TILE_ROWS == 1 ? rows - 1 : rows;
  const float *xl = x + tiled * ldx;
  float *ol = out + tiled * ldo;
  for (u32 lo, hi; claim(m, w->panels, chunk, &lo, &hi);) {
    for (u32 p = lo; p < hi; p++) matmul_panel(BF, w, p, x, ldx, out, ldo, tiled, mode);
    if (tiled == rows) continue;
    u32 p = lo;
    for (; p + 4 <= hi; p += 4) gemv4(BF, w, p, xl, ol, mode);
    for (; p < hi; p++) tile(1, BF, w, p, xl, ldx, ol, ldo, mode);
  }
}

// out (rows, ldo) = or += x (rows, ldx) · Wᵀ, this thread's share of the panels.
static void matmul(Model *m, u32 t, const Weight *w, const float *x, u32 ldx, float *out,
                   u32 ldo, u32 rows, int mode) {
  if (w->bf16) matmul_bf(1, m, w, x, ldx, out, ldo, rows, mode);
  else matmul_bf(0, m, w, x, ldx, out, ldo, rows, mode);
}

// Interleaved rotary embedding of q and k in place, then k and v appended at the token's slot.
static void rotary_kv(Model *m, u32 t, const Layer *l) {
  u32 HQ = m->heads, HKV = m->kv_heads, D = m->head_dim, half = D / 2;
  u32 width = (HQ + 2 * HKV) * D;
  float *cs = m->scratch + t * m->scratch_floats;  // (D/2) cos, then (D/2) sin
  float *sn = cs + half;
  for (u32 lo, hi; claim(m, m->tokens, 4, &lo, &hi);) for (u32 i = lo; i < hi; i++) {
    float pos = (float)m->positions[i] * m->pos_scale;
    for (u32 f = 0; f < half; f++) {
      double s, c;
      sincos((double)pos * (double)m->inv_freq[f], &s, &c);
      cs[f] = (float)c;
      sn[f] = (float)s;
    }
    float *row = m->qkv + i * width;
    for (u32 h = 0; h < HQ + HKV; h++) {
      float *v = row + h * D;
      for (u32 f = 0; f < half; f++) {
        float x0 = v[2 * f], x1 = v[2 * f + 1];
        v[2 * f] = x0 * cs[f] - x1 * sn[f];
        v[2 * f + 1] = x1 * cs[f] + x0 * sn[f];
      }
    }
    size_t slot = (size_t)m->slots[i] * HKV * D;
    for (u32 e = 0; e < HKV * D; e++) {
      l->k_cache[slot + e] = row[HQ * D + e];
      l->v_cache[slot + e] = row[(HQ + HKV) * D + e];
    }
  }
}

enum { CHUNK = 64 };  // keys per online-softmax step (wasm_runner.ts sizes the scratch for it)

// Scores of one key for NB query heads at once: NB independent multiply-add chains
// instead of one, each summed as `dot` sums it. The queries are interleaved four
// lanes at a time, qt[(d / 4) · G + h] (G heads), so every query load is one pointer
// plus a constant offset (D a multiple of 4).
static inline __attribute__((always_inline)) void head_scores(const int NB, const float *qt, u32 G,
                                                              u32 D, const float *k, float *out) {
  v128_t a[8];
#pragma clang loop unroll(full)
  for (int b = 0; b < NB; b++) a[b] = wasm_f32x4_splat(0);
  const float *qp = qt;
  const float *kp = k;
  for (u32 d = 0; d < D; d += 4) {
    v128_t kv = wasm_v128_load(kp);
#pragma clang loop unroll(full)
    for (int b = 0; b < NB; b++) a[b] = wasm_f32x4_relaxed_madd(wasm_v128_load(qp + 4 * b), kv, a[b]);
    qp += 4 * G;
    OPAQUE(qp);
    kp += 4;
    OPAQUE(kp);
  }
#pragma clang loop unroll(full)
  for (int b = 0; b < NB; b++) {
    out[b * CHUNK] = (wasm_f32x4_extract_lane(a[b], 0) + wasm_f32x4_extract_lane(a[b], 1)) +
                     (wasm_f32x4_extract_lane(a[b], 2) + wasm_f32x4_extract_lane(a[b], 3));
  }
}

// a[0..D) += Σ_j p[j] · v[j][0..D) over the chunk's keys in order, eight vectors of a
// held in registers across the keys (each element sees the same multiply-adds in the
// same order as one key at a time).
static void accumulate(float *a, const float *p, const float *const *v, u32 n, u32 D) {
  u32 d = 0;
  for (; d + 32 <= D; d += 32) {
    v128_t r[8];
#pragma clang loop unroll(full)
    for (int b = 0; b < 8; b++) r[b] = wasm_v128_load(a + d + 4 * b);
    for (u32 j = 0; j < n; j++) {
      v128_t pv = wasm_f32x4_splat(p[j]);
      const float *vj = v[j] + d;
#pragma clang loop unroll(full)
      for (int b = 0; b < 8; b++) {
        r[b] = wasm_f32x4_relaxed_madd(pv, wasm_v128_load(vj + 4 * b), r[b]);
      }
    }
#pragma clang loop unroll(full)
    for (int b = 0; b < 8; b++) wasm_v128_store(a + d + 4 * b, r[b]);
  }
  for (; d + 4 <= D; d += 4) {
    v128_t r = wasm_v128_load(a + d);
    for (u32 j = 0; j < n; j++) {
      r = wasm_f32x4_relaxed_madd(wasm_f32x4_splat(p[j]), wasm_v128_load(v[j] + d), r);
    }
    wasm_v128_store(a + d, r);
  }
  for (; d < D; d++) {
    for (u32 j = 0; j < n; j++) a[d] = fmadd(p[j], v[j][d], a[d]);
  }
}

// Where keys [c0, c0 + n) of KV head g sit in the cache, through a sequence's block table:
// consecutive keys, so one table lookup per block rather than a division per key.
static inline void chunk_rows(const Model *m, const Layer *l, const u32 *table, u32 g, u32 c0,
                              u32 n, const float **krow, const float **vrow) {
  u32 B = m->block_size, HKV = m->kv_heads, D = m->head_dim;
  u32 blk = c0 / B, off = c0 % B;
  for (u32 j = 0; j < n; j++, off++) {
    if (off == B) {
      blk++;
      off = 0;
    }
    size_t base = ((size_t)(table[blk] * B + off) * HKV + g) * D;
    krow[j] = l->k_cache + base;
    vrow[j] = l->v_cache + base;
  }
}

// One online-softmax step of a row over a chunk of n scores: turns the scores into
// weights against the new running max, folds their sum into *sum, and returns the
// factor the row's earlier value sums must be scaled by.
static float chunk_softmax(float *sh, u32 n, float *mx, float *sum) {
  // The chunk's max and the sum of its weights, four lanes at a time, then the tail.
  v128_t m4 = wasm_f32x4_splat(*mx);
  u32 j = 0;
  for (; j + 4 <= n; j += 4) m4 = wasm_f32x4_pmax(m4, wasm_v128_load(sh + j));
  float lanes[4];
  wasm_v128_store(lanes, m4);
  float mnew = lanes[0];
  for (int lane = 1; lane < 4; lane++) mnew = lanes[lane] > mnew ? lanes[lane] : mnew;
  for (; j < n; j++) mnew = sh[j] > mnew ? sh[j] : mnew;
  const v128_t mv = wasm_f32x4_splat(mnew);
  v128_t t4 = wasm_f32x4_splat(0);
  for (j = 0; j + 4 <= n; j += 4) {
    v128_t e = vexp(wasm_f32x4_sub(wasm_v128_load(sh + j), mv));
    wasm_v128_store(sh + j, e);
    t4 = wasm_f32x4_add(t4, e);
  }
  float total = (wasm_f32x4_extract_lane(t4, 0) + wasm_f32x4_extract_lane(t4, 1)) +
                (wasm_f32x4_extract_lane(t4, 2) + wasm_f32x4_extract_lane(t4, 3));
  for (; j < n; j++) {
    sh[j] = sexp(sh[j] - mnew);
    total += sh[j];
  }
  float corr = sexp(*mx - mnew);
  *sum = *sum * corr + total;
  *mx = mnew;
  return corr;
}

// Causal attention of one token for all query heads of one KV head, in chunks of
// CHUNK keys with an online softmax; keys read through the sequence's block table.
// Each key's scores are taken for eight heads at once and each head's values are
// summed with its accumulator in registers; every sum runs in the same order as one
// head and one key at a time, so a token's result is bit-identical however it is
// batched, decoded or prefilled.
static __attribute__((noinline)) void attend(Model *m, const Layer *l, u32 i, u32 g,
                                             float *scratch) {
  u32 HQ = m->heads, HKV = m->kv_heads, D = m->head_dim, G = HQ / HKV;
  u32 width = (HQ + 2 * HKV) * D;
  float *q = scratch;             // (G, D) scaled queries; (D / 4, G, 4) when D % 4 == 0
  float *acc = q + G * D;         // (G, D)
  float *s = acc + G * D;         // (G, CHUNK) scores, then probabilities
  float *mx = s + G * CHUNK;      // (G) running max
  float *sum = mx + G;            // (G) running denominator
  const float *qsrc = m->qkv + i * width + g * G * D;
  const int simd = D % 4 == 0;
  for (u32 h = 0; h < G; h++) {
    for (u32 d = 0; d < D; d++) {
      q[simd ? ((d / 4) * G + h) * 4 + d % 4 : h * D + d] = qsrc[h * D + d] * m->attn_scale;
      acc[h * D + d] = 0;
    }
  }
  for (u32 h = 0; h < G; h++) {
    mx[h] = -3.0e38f;
    sum[h] = 0;
  }
  u32 len = m->positions[i] + 1;
  const u32 *table = m->block_table + m->seq_of[i] * m->max_blocks;
  const float *krow[CHUNK], *vrow[CHUNK];
  for (u32 c0 = 0; c0 < len; c0 += CHUNK) {
    u32 n = len - c0 < CHUNK ? len - c0 : CHUNK;
    chunk_rows(m, l, table, g, c0, n, krow, vrow);
    for (u32 j = 0; j < n; j++) {
      const float *k = krow[j];
      u32 h = 0;
      if (simd) {
        for (; h + 8 <= G; h += 8) head_scores(8, q + 4 * h, G, D, k, s + h * CHUNK + j);
        for (; h + 4 <= G; h += 4) head_scores(4, q + 4 * h, G, D, k, s + h * CHUNK + j);
        for (; h < G; h++) head_scores(1, q + 4 * h, G, D, k, s + h * CHUNK + j);
      } else {
        for (; h < G; h++) s[h * CHUNK + j] = dot(q + h * D, k, D);
      }
    }
    for (u32 h = 0; h < G; h++) {
      float *sh = s + h * CHUNK;
      float corr = chunk_softmax(sh, n, mx + h, sum + h);
      float *a = acc + h * D;
      for (u32 d = 0; d < D; d++) a[d] *= corr;
      accumulate(a, sh, vrow, n, D);
    }
  }
  float *out = m->attn + i * HQ * D + g * G * D;
  for (u32 h = 0; h < G; h++) {
    for (u32 d = 0; d < D; d++) out[h * D + d] = acc[h * D + d] / sum[h];
  }
}

// Query rows per block of prefill tokens (tokens × heads of one KV group).
enum { BLOCK_ROWS = 32 };

// Prefill tokens per block: as many as fill BLOCK_ROWS rows with the group's heads.
static inline u32 block_tokens(const Model *m) {
  u32 G = m->heads / m->kv_heads;
  return G >= BLOCK_ROWS ? 1 : BLOCK_ROWS / G;
}

// Scores of R ≤ 4 query rows (D apart at q) against NK ≤ 2 keys, at s[r · CHUNK + c]:
// each score is four lane sums over d in order, then (l0 + l1) + (l2 + l3), exactly as
// head_scores sums it, so a row's scores do not depend on its block.
static inline __attribute__((always_inline)) void scores_tile(const int R, const int NK,
                                                              const float *q, u32 D,
                                                              const float *const *k, float *s) {
  v128_t a[4][2];
#pragma clang loop unroll(full)
  for (int r = 0; r < 4; r++) a[r][0] = a[r][1] = wasm_f32x4_splat(0);
  const float *k0 = k[0], *k1 = k[NK - 1];
  const float *qp = q;
  for (u32 d = 0; d < D; d += 4) {
    v128_t kv0 = wasm_v128_load(k0 + d), kv1 = wasm_v128_load(k1 + d);
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++) {
      v128_t qv = wasm_v128_load(qp + r * D);
      a[r][0] = wasm_f32x4_relaxed_madd(qv, kv0, a[r][0]);
      if (NK > 1) a[r][1] = wasm_f32x4_relaxed_madd(qv, kv1, a[r][1]);
    }
    qp += 4;
    OPAQUE(qp);
  }
#pragma clang loop unroll(full)
  for (int r = 0; r < R; r++) {
#pragma clang loop unroll(full)
    for (int c = 0; c < NK; c++) {
      s[r * CHUNK + c] = (wasm_f32x4_extract_lane(a[r][c], 0) + wasm_f32x4_extract_lane(a[r][c], 1)) +
                         (wasm_f32x4_extract_lane(a[r][c], 2) + wasm_f32x4_extract_lane(a[r][c], 3));
    }
  }
}

// R ≤ 4 rows' scores against keys [0, n).
static inline __attribute__((always_inline)) void scores_rows(const int R, const float *q, u32 D,
                                                              const float *const *k, u32 n,
                                                              float *s) {
  u32 j = 0;
  for (; j + 2 <= n; j += 2) scores_tile(R, 2, q, D, k + j, s + j);
  if (j < n) scores_tile(R, 1, q, D, k + j, s + j);
}

// acc[r][d, d + 4·NV) += Σ_{j0 ≤ j < j1} p[r][j] · v[j][d, d + 4·NV) for R ≤ 4 rows (acc D
// apart, p CHUNK apart), the sums in registers, each element's multiply-adds in key
// order as `accumulate` does them.
static inline __attribute__((always_inline)) void pv_tile(const int R, const int NV, float *acc,
                                                          u32 D, const float *p,
                                                          const float *const *v, u32 j0, u32 j1,
                                                          u32 d) {
  v128_t a[4][2];
#pragma clang loop unroll(full)
  for (int r = 0; r < R; r++) {
#pragma clang loop unroll(full)
    for (int b = 0; b < NV; b++) a[r][b] = wasm_v128_load(acc + r * D + d + 4 * b);
  }
  for (u32 j = j0; j < j1; j++) {
    const float *vj = v[j] + d;
    v128_t v0 = wasm_v128_load(vj), v1 = NV > 1 ? wasm_v128_load(vj + 4) : v0;
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++) {
      v128_t pv = wasm_v128_load32_splat(p + r * CHUNK + j);
      a[r][0] = wasm_f32x4_relaxed_madd(pv, v0, a[r][0]);
      if (NV > 1) a[r][1] = wasm_f32x4_relaxed_madd(pv, v1, a[r][1]);
    }
  }
#pragma clang loop unroll(full)
  for (int r = 0; r < R; r++) {
#pragma clang loop unroll(full)
    for (int b = 0; b < NV; b++) wasm_v128_store(acc + r * D + d + 4 * b, a[r][b]);
  }
}

// R ≤ 4 rows' value sums over keys [j0, j1) for every d (D a multiple of 4).
static inline __attribute__((always_inline)) void pv_rows(const int R, float *acc, u32 D,
                                                          const float *p, const float *const *v,
                                                          u32 j0, u32 j1) {
  u32 d = 0;
  for (; d + 8 <= D; d += 8) pv_tile(R, 2, acc, D, p, v, j0, j1, d);
  if (d < D) pv_tile(R, 1, acc, D, p, v, j0, j1, d);
}

// Causal attention of `count` consecutive prefill tokens of one sequence (i0 the first)
// for all query heads of KV head g: every key is loaded once for the block's rows
// (tokens × heads) instead of once per token. Each row's scores, softmax steps and
// value sums are those of `attend`, in the same order, so results are bit-identical to
// attending token by token (wasm_runner_test.ts checks it).
static __attribute__((noinline)) void attend_block(Model *m, const Layer *l, u32 i0, u32 count,
                                                   u32 g, float *scratch) {
  u32 HQ = m->heads, HKV = m->kv_heads, D = m->head_dim, G = HQ / HKV;
  u32 R = count * G;
  u32 width = (HQ + 2 * HKV) * D;
  float *q = scratch;             // (R, D) scaled queries, row = token · G + head
  float *acc = q + R * D;         // (R, D)
  float *s = acc + R * D;         // (R, CHUNK) scores, then weights
  float *mx = s + R * CHUNK;      // (R) running max
  float *sum = mx + R;            // (R) running denominator
  for (u32 c = 0; c < count; c++) {
    const float *qsrc = m->qkv + (i0 + c) * width + g * G * D;
    for (u32 x = 0; x < G * D; x++) {
      q[c * G * D + x] = qsrc[x] * m->attn_scale;
      acc[c * G * D + x] = 0;
    }
  }
  for (u32 r = 0; r < R; r++) {
    mx[r] = -3.0e38f;
    sum[r] = 0;
  }
  u32 first = m->positions[i0];  // the block's tokens sit at first, first + 1, ...
  u32 len = first + count;        // keys the last token sees
  const u32 *table = m->block_table + m->seq_of[i0] * m->max_blocks;
  const float *krow[CHUNK], *vrow[CHUNK];
  for (u32 c0 = 0; c0 < len; c0 += CHUNK) {
    u32 n = len - c0 < CHUNK ? len - c0 : CHUNK;
    chunk_rows(m, l, table, g, c0, n, krow, vrow);
    u32 r = 0;
    for (; r + 4 <= R; r += 4) scores_rows(4, q + r * D, D, krow, n, s + r * CHUNK);
    for (; r < R; r++) scores_rows(1, q + r * D, D, krow, n, s + r * CHUNK);
    // Row r belongs to token r / G, which sees keys [0, first + r / G]: n_r of this chunk.
    u32 nr[BLOCK_ROWS];
    for (r = 0; r < R; r++) {
      u32 seen = first + r / G + 1;
      nr[r] = seen <= c0 ? 0 : seen - c0 < n ? seen - c0 : n;
      if (nr[r] == 0) continue;  // the chunk starts past this token: it never sees it
      float *sh = s + r * CHUNK;
      float corr = chunk_softmax(sh, nr[r], mx + r, sum + r);
      float *a = acc + r * D;
      for (u32 d = 0; d < D; d++) a[d] *= corr;
    }
    // Value sums: four rows together over the keys they all see, then each alone.
    for (r = 0; r + 4 <= R; r += 4) {
      u32 lo = nr[r];
      for (u32 x = 1; x < 4; x++) lo = nr[r + x] < lo ? nr[r + x] : lo;
      pv_rows(4, acc + r * D, D, s + r * CHUNK, vrow, 0, lo);
      for (u32 x = 0; x < 4; x++) {
        if (nr[r + x] > lo) pv_rows(1, acc + (r + x) * D, D, s + (r + x) * CHUNK, vrow, lo, nr[r + x]);
      }
    }
    for (; r < R; r++) pv_rows(1, acc + r * D, D, s + r * CHUNK, vrow, 0, nr[r]);
  }
  for (u32 c = 0; c < count; c++) {
    float *out = m->attn + (i0 + c) * HQ * D + g * G * D;
    const float *a = acc + c * G * D;
    for (u32 h = 0; h < G; h++) {
      for (u32 d = 0; d < D; d++) out[h * D + d] = a[h * D + d] / sum[c * G + h];
    }
  }
}

// Tokens in blocks: a block starts at a sequence's first token in the step and at every
// position that is a multiple of block_tokens, so blocks (and results) depend on
// positions alone. Items are (token, KV head); those that start no block are skipped.
static void attention(Model *m, u32 t, const Layer *l) {
  u32 tasks = m->tokens * m->kv_heads;
  float *scratch = m->scratch + t * m->scratch_floats;
  u32 TB = m->head_dim % 4 == 0 ? block_tokens(m) : 1;
  for (u32 lo, hi; claim(m, tasks, 1, &lo, &hi);) for (u32 x = lo; x < hi; x++) {
    u32 i = x / m->kv_heads, g = x % m->kv_heads;
    if (TB == 1) {
      attend(m, l, i, g, scratch);
      continue;
    }
    int starts = i == 0 || m->seq_of[i - 1] != m->seq_of[i] || m->positions[i] % TB == 0;
    if (!starts) continue;
    u32 count = 1;
    while (count < TB && i + count < m->tokens && m->seq_of[i + count] == m->seq_of[i] &&
           m->positions[i + count] % TB != 0) {
      count++;
    }
    if (count == 1) attend(m, l, i, g, scratch);
    else attend_block(m, l, i, count, g, scratch);
  }
}

// ids[r] = argmax over the first valid_vocab logits of row r; ties → lowest id.
static void argmax(Model *m, u32 t) {
  u32 V = m->vocab;
  for (u32 lo, hi; claim(m, m->logit_rows, 1, &lo, &hi);) for (u32 r = lo; r < hi; r++) {
    const float *row = m->logits + (size_t)r * V;
    float best = -3.0e38f;
    u32 id = 0xffffffffu;
    for (u32 i = 0; i < m->valid_vocab; i++) {
      if (row[i] > best) {
        best = row[i];
        id = i;
      }
    }
    m->out_ids[r] = id;
  }
}


enum { NONE = 0xffffffffu, INF_BITS = 0x7f800000u };

// Whether grammar mask `mask_row` allows id i (every id without a mask).
static inline int allowed(const Model *m, u32 mask_row, u32 i) {
  if (mask_row == NONE) return 1;
  return (m->masks[(size_t)mask_row * m->mask_words + (i >> 5)] >> (i & 31)) & 1;
}

// How many of w[0..n) have bits ≥ t (w non-negative, so bits order like the values).
static u32 count_at_least(const float *w, u32 n, u32 t) {
  v128_t c = wasm_i32x4_splat(0);
  v128_t tv = wasm_i32x4_splat((int)t);
  u32 i = 0;
  for (; i + 4 <= n; i += 4) c = wasm_i32x4_sub(c, wasm_u32x4_ge(wasm_v128_load(w + i), tv));
  u32 total = wasm_i32x4_extract_lane(c, 0) + wasm_i32x4_extract_lane(c, 1) +
              wasm_i32x4_extract_lane(c, 2) + wasm_i32x4_extract_lane(c, 3);
  for (; i < n; i++) total += __builtin_bit_cast(u32, w[i]) >= t;
  return total;
}

// Sum of the w[0..n) with bits ≥ t, in one fixed order (four lanes, then the tail).
static float mass_at_least(const float *w, u32 n, u32 t) {
  v128_t m = wasm_f32x4_splat(0);
  v128_t tv = wasm_i32x4_splat((int)t);
  u32 i = 0;
  for (; i + 4 <= n; i += 4) {
    v128_t x = wasm_v128_load(w + i);
    m = wasm_f32x4_add(m, wasm_v128_and(x, wasm_u32x4_ge(x, tv)));
  }
  float total = (wasm_f32x4_extract_lane(m, 0) + wasm_f32x4_extract_lane(m, 1)) +
                (wasm_f32x4_extract_lane(m, 2) + wasm_f32x4_extract_lane(m, 3));
  for (; i < n; i++) {
    if (__builtin_bit_cast(u32, w[i]) >= t) total += w[i];
  }
  return total;
}

// The token of logit row r as its SampleRow says, by shaders/sample.wgsl's algorithm:
// edits in place; the largest scaled logit (greedy's answer, ties → lowest id); weights
// exp(l/T − max) in place (NaN, masked and padding ids weigh 0); top-k and top-p cuts
// found by bisection on the weights' bit patterns; one draw in id order. NONE when the
// row has no finite logit. A row's result depends on that row alone.
static u32 sample_row(Model *m, u32 r) {
  const SampleRow *p = &m->sample_rows[r];
  float *row = m->logits + (size_t)r * m->vocab;
  const u32 V = m->valid_vocab;
  for (u32 e = 0; e < p->edit_count; e++) {
    const Edit *ed = &m->edits[p->edit_start + e];
    if (ed->id >= V) continue;
    float v = row[ed->id] + ed->bias;
    if (ed->rep != 1.0f) v = v > 0.0f ? v / ed->rep : v * ed->rep;
    row[ed->id] = v - ed->sub;
  }
  const float inv_t = p->mode == 2 ? 1.0f / p->temperature : 1.0f;
  float top = -3.4e38f;
  u32 best = NONE;
  for (u32 i = 0; i < V; i++) {
    float v = row[i] * inv_t;
    if (v > top && allowed(m, p->mask_row, i)) {
      top = v;
      best = i;
    }
  }
  if (p->mode == 1 || best == NONE) return best;

  const v128_t it = wasm_f32x4_splat(inv_t), tp = wasm_f32x4_splat(top);
  const v128_t zero = wasm_f32x4_splat(0), floor = wasm_f32x4_splat(-87.0f);
  u32 i = 0;
  for (; i + 4 <= V; i += 4) {
    v128_t x = wasm_f32x4_sub(wasm_f32x4_mul(wasm_v128_load(row + i), it), tp);
    v128_t w = vexp(x);
    // Kept: a weight ≥ 0 (not NaN) whose exponent did not underflow (vexp clamps there).
    v128_t keep = wasm_v128_and(wasm_f32x4_ge(w, zero), wasm_f32x4_ge(x, floor));
    wasm_v128_store(row + i, wasm_v128_and(w, keep));
  }
  for (; i < V; i++) {
    float x = row[i] * inv_t - top;
    float w = sexp(x);
    row[i] = w >= 0.0f && x >= -87.0f ? w : 0.0f;
  }
  if (p->mask_row != NONE) {
    for (u32 j = 0; j < V; j++) {
      if (!allowed(m, p->mask_row, j)) row[j] = 0.0f;
    }
  }

  u32 cut = 1;  // bits of the smallest weight kept (1: every non-zero weight)
  if (p->top_k > 0 && p->top_k < V) {
    u32 lo = 0, hi = INF_BITS;
    while (hi - lo > 1) {
      u32 mid = lo + (hi - lo) / 2;
      if (count_at_least(row, V, mid) >= p->top_k) lo = mid;
      else hi = mid;
    }
    if (lo > cut) cut = lo;
  }
  if (p->top_p < 1.0f) {
    float want = p->top_p * mass_at_least(row, V, cut);
    u32 lo = cut, hi = INF_BITS;
    while (hi - lo > 1) {
      u32 mid = lo + (hi - lo) / 2;
      if (mass_at_least(row, V, mid) >= want) lo = mid;
      else hi = mid;
    }
    cut = lo;
  }

  float total = 0.0f;
  for (u32 j = 0; j < V; j++) {
    float w = row[j];
    if (__builtin_bit_cast(u32, w) >= cut && w >= p->min_p) total += w;
  }
  float goal = p->u * total, acc = 0.0f;
  u32 pick = NONE;
  for (u32 j = 0; j < V; j++) {
    float w = row[j];
    if (__builtin_bit_cast(u32, w) >= cut && w >= p->min_p) {
      pick = j;
      acc += w;
      if (goal < acc) break;
    }
  }
  return pick == NONE ? best : pick;
}

// ids[r] for every logit row whose SampleRow asks for one (mode 0 rows keep their logits).
static void sample(Model *m, u32 t) {
  for (u32 lo, hi; claim(m, m->logit_rows, 1, &lo, &hi);) for (u32 r = lo; r < hi; r++) {
    if (m->sample_rows[r].mode != 0) m->out_ids[r] = sample_row(m, r);
  }
}

// ---------------------------------------------------------------- the step

// The host's clock in milliseconds (performance.now), read only when profiling.
extern double now_ms(void) __attribute__((import_module("env"), import_name("now")));

// The ops of a step, in the order wasm_runner.ts's OPS names them.
enum Op {
  OP_EMBED, OP_INPUT_NORM, OP_QKV, OP_ROTARY_KV, OP_ATTENTION, OP_O, OP_POST_NORM, OP_GATE_UP,
  OP_DOWN, OP_FINAL_NORM, OP_LM_HEAD, OP_ARGMAX, OP_SAMPLE, OP_COUNT
};
u32 op_count(void) { return OP_COUNT; }

// Ends an op: waits for every thread, then thread 0 books the op's time when profiling.
static inline void end_op(Model *m, u32 t, enum Op op, double *clock) {
  barrier(m);
  if (m->prof && t == 0) {
    double n = now_ms();
    m->prof[op] += n - *clock;
    *clock = n;
  }
}

// One forward step; every thread calls this with its index.
void run_step(Model *m, u32 t) {
  u32 T = m->tokens, H = m->hidden, I = m->inter;
  u32 qkv_width = (m->heads + 2 * m->kv_heads) * m->head_dim;
  u32 attn_width = m->heads * m->head_dim;
  double clock = m->prof && t == 0 ? now_ms() : 0;
  embedding(m, t);
  end_op(m, t, OP_EMBED, &clock);
  for (u32 li = 0; li < m->layers; li++) {
    const Layer *l = &m->layer[li];
    rms_norm(m, t, m->x, l->input_norm, m->normed, T, 0);
    end_op(m, t, OP_INPUT_NORM, &clock);
    matmul(m, t, &l->qkv, m->normed, H, m->qkv, qkv_width, T, STORE);
    end_op(m, t, OP_QKV, &clock);
    rotary_kv(m, t, l);
    end_op(m, t, OP_ROTARY_KV, &clock);
    attention(m, t, l);
    end_op(m, t, OP_ATTENTION, &clock);
    matmul(m, t, &l->o, m->attn, attn_width, m->x, H, T, ADD);
    end_op(m, t, OP_O, &clock);
    rms_norm(m, t, m->x, l->post_norm, m->normed, T, 0);
    end_op(m, t, OP_POST_NORM, &clock);
    matmul(m, t, &l->gate_up, m->normed, H, m->act, I, T, SWIGLU);
    end_op(m, t, OP_GATE_UP, &clock);
    matmul(m, t, &l->down, m->act, I, m->x, H, T, ADD);
    end_op(m, t, OP_DOWN, &clock);
  }
  rms_norm(m, t, m->x, m->norm, m->final_rows, m->rows, m->out_rows);
  end_op(m, t, OP_FINAL_NORM, &clock);
  if (m->logit_rows > 0) {
    matmul(m, t, m->lm_head, m->final_rows, H, m->logits, m->vocab, m->logit_rows, STORE);
    end_op(m, t, OP_LM_HEAD, &clock);
    if (m->want_ids == 1) {
      argmax(m, t);
      end_op(m, t, OP_ARGMAX, &clock);
    } else if (m->want_ids == 2) {
      sample(m, t);
      end_op(m, t, OP_SAMPLE, &clock);
    }
  }
  // Every op ended at a barrier, which leaves the work counter at 0 for the next call.
}

// Sampling alone, over the logits already there: after a step's forward pass once its
// grammar masks are ready, and for kernel tests.
void run_sample(Model *m, u32 t) {
  double clock = m->prof && t == 0 ? now_ms() : 0;
  sample(m, t);
  end_op(m, t, OP_SAMPLE, &clock);
}

// Matmul alone, for benchmarks and kernel tests: out (rows, w.n) = x (rows, w.k) · Wᵀ.
void run_matmul(Model *m, u32 t, const Weight *w, const float *x, float *out, u32 rows) {
  matmul(m, t, w, x, w->k, out, w->n, rows, STORE);
  barrier(m);
}
