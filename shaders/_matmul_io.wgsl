// Prelude of the matmul family (gemv.wgsl, matmul.wgsl, gemv_gpu.wgsl, matmul_gpu.wgsl):
// engine/gpu/registry.ts puts this text in front of each of them, so all four read
// their inputs and weights through the same code and cannot drift apart. Each computes
//   y[m, COL_OFFSET + n] (+)= Σ_k x[m, k] · W[n, k]      (W in torch [out, in] layout)
// for one row shard of W (N of its rows); the order of the sum is each kernel's own.

override K: u32;             // input features
override N: u32;             // output features held by this weight shard
override N_TOTAL: u32;       // row stride of y
override COL_OFFSET: u32;    // first column of y this shard writes
override BF16: bool;         // W holds bf16 pairs (else f32 bits)
override ACCUMULATE: bool;   // add to y instead of overwriting (fused residual add)
override M_FROM_ROWS: bool;  // M is step.num_logit_rows instead of step.num_tokens

// The step uniform (STEP_UNIFORM_BYTES in engine/gpu/kernels.ts).
struct Step {
  num_tokens: u32,      // T: tokens of the step, M unless M_FROM_ROWS
  num_rows: u32,        // R: output rows, the sample rows first (unused here)
  num_logit_rows: u32,  // L: sample rows, M with M_FROM_ROWS (lm_head)
  pad: u32,
}

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;    // (M, K) f32, as vec4
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;    // (N, K) bf16 pairs or f32 bits
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // (M, N_TOTAL)

// M: rows of x (and of y) this dispatch computes.
fn m_count() -> u32 {
  return select(step.num_tokens, step.num_logit_rows, M_FROM_ROWS);
}

// x element e (flat index into (M, K)).
fn x1(e: u32) -> f32 {
  return x[e >> 2u][e & 3u];
}

// x elements e..e+3; one vec4 load when rows are vec4-aligned (K % 4 == 0).
fn x4(e: u32) -> vec4<f32> {
  if (K % 4u == 0u) { return x[e >> 2u]; }
  return vec4(x1(e), x1(e + 1u), x1(e + 2u), x1(e + 3u));
}

// u32 word i of the weight shard.
fn word(i: u32) -> u32 {
  return w[i >> 1u][i & 1u];
}

// W element e (flat index into (N, K)): bf16 e is the low half of word e/2 when e is even.
fn w1(e: u32) -> f32 {
  if (BF16) {
    let bits = word(e >> 1u);
    return bitcast<f32>(select(bits << 16u, bits & 0xffff0000u, (e & 1u) == 1u));
  }
  return bitcast<f32>(word(e));
}

// W elements e..e+3; one vec2<u32> load (bf16) or two (f32) when K % 4 == 0.
fn w4(e: u32) -> vec4<f32> {
  if (K % 4u != 0u) { return vec4(w1(e), w1(e + 1u), w1(e + 2u), w1(e + 3u)); }
  if (BF16) {
    let p = w[e >> 2u];
    return bitcast<vec4<f32>>(vec4(p.x << 16u, p.x & 0xffff0000u, p.y << 16u, p.y & 0xffff0000u));
  }
  return bitcast<vec4<f32>>(vec4(w[e >> 1u], w[(e >> 1u) + 1u]));
}
