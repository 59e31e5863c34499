// Matrix-vector product for one-row batches (decode of a single sequence, one logit row):
//   y[m, COL_OFFSET + n] (+)= Σ_k x[m, k] · W[n, k]      (W in torch [out, in] layout)
// for one row shard of W (N of its rows); workgroup row m = workgroup_id.y. Each
// invocation owns 4 columns (one vec4 accumulator) and streams their W rows once with
// vec4 loads; no shared memory, no barriers. matmul.wgsl takes over from 2 rows, where
// reusing each loaded W value for several rows wins.
//
// Summation order: every output is acc = fma(x[m, k], W[n, k], acc) for k = 0, 1, …, K-1
// in that order, exactly as in matmul.wgsl, so a row's result is bit-identical whichever
// kernel ran and whatever else is in the batch.

override K: u32;             // input features
override N: u32;             // output features held by this weight shard
override N_TOTAL: u32;       // row stride of y
override COL_OFFSET: u32;    // first column of y this shard writes
override BF16: bool;         // W holds bf16 pairs (else f32 bits)
override ACCUMULATE: bool;   // add to y instead of overwriting (fused residual add)
override M_FROM_ROWS: bool;  // M is step.num_logit_rows instead of step.num_tokens

const WG = 64u;  // invocations per workgroup, along n (4 columns per invocation)

struct Step { num_tokens: u32, num_rows: u32, num_logit_rows: u32, pad: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;    // (M, K) f32, as vec4
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;    // (N, K) bf16 pairs or f32 bits
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // (M, N_TOTAL)

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

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let M = select(step.num_tokens, step.num_logit_rows, M_FROM_ROWS);
  let n0 = gid.x * 4u;
  let m = gid.y;
  if (n0 >= N || m >= M) { return; }
  // Columns past the edge read the last valid W row and are not written.
  let xr = m * K;
  let wa = min(n0, N - 1u) * K;
  let wb = min(n0 + 1u, N - 1u) * K;
  let wc = min(n0 + 2u, N - 1u) * K;
  let wd = min(n0 + 3u, N - 1u) * K;
  var acc = vec4(0.0);  // acc[c]: column n0 + c
  let k4 = K & ~3u;
  for (var k = 0u; k < k4; k += 4u) {
    let a = w4(wa + k);
    let b = w4(wb + k);
    let c = w4(wc + k);
    let d = w4(wd + k);
    let xv = x4(xr + k);
    acc = fma(vec4(xv.x), vec4(a.x, b.x, c.x, d.x), acc);
    acc = fma(vec4(xv.y), vec4(a.y, b.y, c.y, d.y), acc);
    acc = fma(vec4(xv.z), vec4(a.z, b.z, c.z, d.z), acc);
    acc = fma(vec4(xv.w), vec4(a.w, b.w, c.w, d.w), acc);
  }
  for (var k = k4; k < K; k++) {
    acc = fma(vec4(x1(xr + k)), vec4(w1(wa + k), w1(wb + k), w1(wc + k), w1(wd + k)), acc);
  }
  for (var j = 0u; j < 4u; j++) {
    let n = n0 + j;
    if (n >= N) { break; }
    let idx = m * N_TOTAL + COL_OFFSET + n;
    if (ACCUMULATE) { y[idx] += acc[j]; } else { y[idx] = acc[j]; }
  }
}
