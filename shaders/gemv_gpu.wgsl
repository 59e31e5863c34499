// GPU-class matrix-vector product for batches of a few rows (decode):
//   y[m, COL_OFFSET + n] (+)= Σ_k x[m, k] · W[n, k]      (W in torch [out, in] layout)
// for one row shard of W (N of its rows). A workgroup computes ROWS outputs of one row m;
// each output's K is split across LANES adjacent invocations, so a row of W is read by
// LANES invocations side by side (coalesced), and N = 1024 still launches 1024 / ROWS
// workgroups.
//
// Summation order (the gpu class's contract, shared with matmul_gpu.wgsl): K is cut into
// chunks of 4 (the last one padded with zeros); lane l sums chunks l, l + LANES, … in that
// order, each chunk as fma(x, w, acc) over its 4 elements in k order, from acc = 0.0; the
// LANES partial sums are then added in the fixed tree of `tree8`. So a row's result is
// bit-identical whichever of the two kernels ran and whatever else is in the batch.

override K: u32;             // input features
override N: u32;             // output features held by this weight shard
override N_TOTAL: u32;       // row stride of y
override COL_OFFSET: u32;    // first column of y this shard writes
override BF16: bool;         // W holds bf16 pairs (else f32 bits)
override ACCUMULATE: bool;   // add to y instead of overwriting (fused residual add)
override M_FROM_ROWS: bool;  // M is step.num_logit_rows instead of step.num_tokens
override ROWS: u32 = 8u;     // outputs per workgroup (set by engine/gpu/registry.ts)

const LANES = 8u;  // k lanes per output; must equal LANES in matmul_gpu.wgsl

struct Step { num_tokens: u32, num_rows: u32, num_logit_rows: u32, pad: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;    // (M, K) f32, as vec4
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;    // (N, K) bf16 pairs or f32 bits
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // (M, N_TOTAL)

var<workgroup> partial: array<f32, LANES * ROWS>;  // (ROWS, LANES) lane sums

// x element e (flat index into (M, K)).
fn x1(e: u32) -> f32 {
  return x[e >> 2u][e & 3u];
}

// W element e (flat index into (N, K)): bf16 e is the low half of word e/2 when e is even.
fn w1(e: u32) -> f32 {
  let i = select(e, e >> 1u, BF16);
  let bits = w[i >> 1u][i & 1u];
  if (BF16) { return bitcast<f32>(select(bits << 16u, bits & 0xffff0000u, (e & 1u) == 1u)); }
  return bitcast<f32>(bits);
}

// Chunk c of x row m: x[m, 4c .. 4c+3], zeros past K.
fn x_chunk(m: u32, c: u32) -> vec4<f32> {
  if (K % 4u == 0u) { return x[m * (K / 4u) + c]; }
  var v = vec4(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (4u * c + i < K) { v[i] = x1(m * K + 4u * c + i); }
  }
  return v;
}

// Chunk c of W row n: W[n, 4c .. 4c+3], zeros past K.
fn w_chunk(n: u32, c: u32) -> vec4<f32> {
  if (K % 4u == 0u) {
    let e = n * K + 4u * c;
    if (BF16) {
      let p = w[e >> 2u];
      return bitcast<vec4<f32>>(vec4(p.x << 16u, p.x & 0xffff0000u, p.y << 16u, p.y & 0xffff0000u));
    }
    return bitcast<vec4<f32>>(vec4(w[e >> 1u], w[(e >> 1u) + 1u]));
  }
  var v = vec4(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (4u * c + i < K) { v[i] = w1(n * K + 4u * c + i); }
  }
  return v;
}

// acc + x · w over one chunk, element by element in k order (same as matmul_gpu.wgsl).
fn fma_chunk(xv: vec4<f32>, wv: vec4<f32>, acc: f32) -> f32 {
  var s = fma(xv.x, wv.x, acc);
  s = fma(xv.y, wv.y, s);
  s = fma(xv.z, wv.z, s);
  return fma(xv.w, wv.w, s);
}

// The fixed tree over the LANES = 8 lane sums (same as matmul_gpu.wgsl).
fn tree8(p0: f32, p1: f32, p2: f32, p3: f32, p4: f32, p5: f32, p6: f32, p7: f32) -> f32 {
  return ((p0 + p4) + (p2 + p6)) + ((p1 + p5) + (p3 + p7));
}

@compute @workgroup_size(LANES * ROWS)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let M = select(step.num_tokens, step.num_logit_rows, M_FROM_ROWS);
  let m = wg.y;
  if (m >= M) { return; }  // uniform across the workgroup
  let lane = li % LANES;
  let r = li / LANES;
  let n = wg.x * ROWS + r;
  let wn = min(n, N - 1u);  // rows past the edge read the last one and are not written
  let chunks = (K + 3u) / 4u;
  var acc = 0.0;
  var c = lane;
  // Four of this lane's chunks per iteration, all loads issued before the fmas (which
  // keep the chunk order), so each invocation has several loads in flight.
  for (; c + 3u * LANES < chunks; c += 4u * LANES) {
    let x0 = x_chunk(m, c);
    let w0 = w_chunk(wn, c);
    let x1 = x_chunk(m, c + LANES);
    let w1 = w_chunk(wn, c + LANES);
    let x2 = x_chunk(m, c + 2u * LANES);
    let w2 = w_chunk(wn, c + 2u * LANES);
    let x3 = x_chunk(m, c + 3u * LANES);
    let w3 = w_chunk(wn, c + 3u * LANES);
    acc = fma_chunk(x0, w0, acc);
    acc = fma_chunk(x1, w1, acc);
    acc = fma_chunk(x2, w2, acc);
    acc = fma_chunk(x3, w3, acc);
  }
  for (; c < chunks; c += LANES) { acc = fma_chunk(x_chunk(m, c), w_chunk(wn, c), acc); }
  partial[li] = acc;
  workgroupBarrier();
  if (lane != 0u || n >= N) { return; }
  let p = r * LANES;
  let s = tree8(partial[p], partial[p + 1u], partial[p + 2u], partial[p + 3u],
                partial[p + 4u], partial[p + 5u], partial[p + 6u], partial[p + 7u]);
  let idx = m * N_TOTAL + COL_OFFSET + n;
  if (ACCUMULATE) { y[idx] += s; } else { y[idx] = s; }
}
