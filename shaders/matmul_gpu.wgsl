// GPU-class tiled matmul for batches of more rows than gemv_gpu.wgsl takes (prefill,
// batched decode):
//   y[m, COL_OFFSET + n] (+)= Σ_k x[m, k] · W[n, k]      (W in torch [out, in] layout)
// for one row shard of W (N of its rows). A workgroup computes a BM × BN output tile
// (32 × 8·PN: 32 × 64, or 32 × 32 and 32 × 16 for narrow shards, so that they still launch
// enough workgroups to fill a large GPU).
// Each step stages a BM × BK slice of x and a BN × BK slice of W in workgroup memory
// (BK = 4 · LANES: one 4-element chunk per k lane), loaded by adjacent invocations from
// adjacent addresses; bf16 weights are widened to f32 on the way in. The invocations
// are LANES k lanes × PM · PN output blocks of TM × TN, so each k lane owns one chunk of
// every staged slice; after the last step the lanes' partial sums are added in the same
// fixed tree as in gemv_gpu.wgsl, a register row at a time through workgroup memory.
// Arithmetic is f32 throughout (no f16).
//
// Summation order (the gpu class's contract, shared with gemv_gpu.wgsl): K is cut into
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

override PN: u32 = 8u;     // invocation blocks along n: 8, or 4 or 2 for narrow shards (registry.ts)

const LANES = 8u;          // k lanes per output; must equal LANES in gemv_gpu.wgsl
const PM = 4u;             // invocation blocks along m (ws holds the 2 · WG parked vec4s
                           // of a reduction round only while PM ≤ 4)
const TM = 8u;             // rows per invocation
const TN = 8u;             // columns per invocation; equal to LANES, so that one reduction
                           // round has as many outputs (WG · TN / LANES) as invocations
const BM = PM * TM;        // rows per tile
override BN = PN * TN;     // columns per tile
override WG = LANES * PM * PN;  // invocations (256, 128 or 64)

struct Step { num_tokens: u32, num_rows: u32, num_logit_rows: u32, pad: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;    // (M, K) f32, as vec4
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;    // (N, K) bf16 pairs or f32 bits
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // (M, N_TOTAL)

var<workgroup> xs: array<vec4<f32>, BM * LANES>;  // (BM, LANES) chunks of x: 4 KiB
var<workgroup> ws: array<vec4<f32>, BN * LANES>;  // (BN, LANES) chunks of W: ≤ 8 KiB; then
                                                  // (WG, TN) lane sums of one register row

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

// acc + x · w over one chunk, element by element in k order (same as gemv_gpu.wgsl).
fn fma_chunk(xv: vec4<f32>, wv: vec4<f32>, acc: f32) -> f32 {
  var s = fma(xv.x, wv.x, acc);
  s = fma(xv.y, wv.y, s);
  s = fma(xv.z, wv.z, s);
  return fma(xv.w, wv.w, s);
}

// The fixed tree over the LANES = 8 lane sums (same as gemv_gpu.wgsl).
fn tree8(p0: f32, p1: f32, p2: f32, p3: f32, p4: f32, p5: f32, p6: f32, p7: f32) -> f32 {
  return ((p0 + p4) + (p2 + p6)) + ((p1 + p5) + (p3 + p7));
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let M = select(step.num_tokens, step.num_logit_rows, M_FROM_ROWS);
  let m0 = wg.y * BM;
  let n0 = wg.x * BN;
  if (m0 >= M || n0 >= N) { return; }  // uniform across the workgroup
  let lane = li % LANES;
  let b = li / LANES;  // output block: rows pm + PM·i, columns pn + PN·j
  let pm = b / PN;
  let pn = b % PN;
  let chunks = (K + 3u) / 4u;
  var acc: array<array<f32, TN>, TM>;
  for (var c0 = 0u; c0 < chunks; c0 += LANES) {
    // Stage chunks c0 .. c0 + LANES − 1 of the tile's rows; LANES adjacent invocations
    // read one row's BK contiguous elements. Rows past the edge repeat the last one.
    let c = c0 + li % LANES;
    for (var e = li; e < BM * LANES; e += WG) {
      var xv = vec4(0.0);
      if (c < chunks) { xv = x_chunk(min(m0 + e / LANES, M - 1u), c); }
      xs[e] = xv;
    }
    for (var e = li; e < BN * LANES; e += WG) {
      var wv = vec4(0.0);
      if (c < chunks) { wv = w_chunk(min(n0 + e / LANES, N - 1u), c); }
      ws[e] = wv;
    }
    workgroupBarrier();
    if (c0 + lane < chunks) {
      var wv: array<vec4<f32>, TN>;
      for (var j = 0u; j < TN; j++) { wv[j] = ws[(pn + PN * j) * LANES + lane]; }
      for (var i = 0u; i < TM; i++) {
        let xv = xs[(pm + PM * i) * LANES + lane];
        for (var j = 0u; j < TN; j++) { acc[i][j] = fma_chunk(xv, wv[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  // Add the LANES lane sums of each output, one register row i at a time: invocation li
  // parks acc[i][0..TN) in ws[2·li], ws[2·li + 1], then reduces output (block, column j).
  let o = li;  // the output this invocation reduces: block o / TN, column o % TN
  let ob = o / TN;
  let oj = o % TN;
  let m_out = m0 + ob / PN;
  let n_out = n0 + ob % PN + PN * oj;
  for (var i = 0u; i < TM; i++) {
    ws[2u * li] = vec4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
    ws[2u * li + 1u] = vec4(acc[i][4], acc[i][5], acc[i][6], acc[i][7]);
    workgroupBarrier();
    // Lane l of block ob parked its sums at ws[2·(ob·LANES + l) + oj / 4][oj % 4].
    let q = 2u * ob * LANES + oj / 4u;
    let s = tree8(ws[q][oj % 4u], ws[q + 2u][oj % 4u], ws[q + 4u][oj % 4u],
                  ws[q + 6u][oj % 4u], ws[q + 8u][oj % 4u], ws[q + 10u][oj % 4u],
                  ws[q + 12u][oj % 4u], ws[q + 14u][oj % 4u]);
    workgroupBarrier();
    let m = m_out + PM * i;
    if (m < M && n_out < N) {
      let idx = m * N_TOTAL + COL_OFFSET + n_out;
      if (ACCUMULATE) { y[idx] += s; } else { y[idx] = s; }
    }
  }
}
