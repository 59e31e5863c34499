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
// Summation order: the gpu class's, in _matmul_lanes.wgsl (shared with gemv_gpu.wgsl),
// so a row's result is bit-identical whichever of the two kernels ran and whatever else
// is in the batch.

// Prelude (prepended by engine/gpu/registry.ts): _matmul_io.wgsl (the overrides K, N,
// N_TOTAL, COL_OFFSET, BF16, ACCUMULATE, M_FROM_ROWS, the bindings step, x, w, y and
// their readers), then _matmul_lanes.wgsl (LANES, x_chunk, w_chunk, fma_chunk, tree8).

override PN: u32 = 8u;     // invocation blocks along n: 8, or 4 or 2 for narrow shards (registry.ts)

const PM = 4u;             // invocation blocks along m (ws holds the 2 · WG parked vec4s
                           // of a reduction round only while PM ≤ 4)
const TM = 8u;             // rows per invocation
const TN = 8u;             // columns per invocation; equal to LANES, so that one reduction
                           // round has as many outputs (WG · TN / LANES) as invocations
const BM = PM * TM;        // rows per tile
override BN = PN * TN;     // columns per tile
override WG = LANES * PM * PN;  // invocations (256, 128 or 64)

var<workgroup> xs: array<vec4<f32>, BM * LANES>;  // (BM, LANES) chunks of x: 4 KiB
var<workgroup> ws: array<vec4<f32>, BN * LANES>;  // (BN, LANES) chunks of W: ≤ 8 KiB; then
                                                  // (WG, TN) lane sums of one register row

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let M = m_count();
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
