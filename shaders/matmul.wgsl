// Register-tiled matmul for batches of more than one row:
//   y[m, COL_OFFSET + n] (+)= Σ_k x[m, k] · W[n, k]      (W in torch [out, in] layout)
// for one row shard of W (N of its rows). Each invocation computes a TM × TN block of
// outputs straight from x and W (vec4 loads, no shared memory, no barriers: on a CPU
// adapter the caches do shared memory's job and barriers are expensive). Each loaded
// x value feeds TN fmas and each W value TM. Tile sizes were measured on llvmpipe
// (4 × 8 beat 4 × 4, 8 × 4, 8 × 8 and 4 × 16).
//
// Summation order: every output is acc = fma(x[m, k], W[n, k], acc) for k = 0, 1, …, K-1
// in that order, exactly as in gemv.wgsl, so a row's result is bit-identical whichever
// kernel ran and whatever else is in the batch.

// Prelude (prepended by engine/gpu/registry.ts): _matmul_io.wgsl, with the overrides
// K, N, N_TOTAL, COL_OFFSET, BF16, ACCUMULATE, M_FROM_ROWS, the bindings step, x, w, y
// and the readers x1, x4, w1, w4 that gemv.wgsl uses too.

const WG = 64u;  // invocations per workgroup, along n
const TM = 4u;   // rows per invocation
const NV = 2u;   // vec4 accumulators per row
const TN = 8u;   // columns per invocation (4 · NV)

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let M = m_count();
  let n0 = gid.x * TN;
  let m0 = gid.y * TM;
  if (n0 >= N || m0 >= M) { return; }
  // Rows and columns past the edge read the last valid one and are not written.
  var xr: array<u32, TM>;  // row starts in x
  for (var i = 0u; i < TM; i++) { xr[i] = min(m0 + i, M - 1u) * K; }
  var wr: array<u32, TN>;  // row starts in W
  for (var j = 0u; j < TN; j++) { wr[j] = min(n0 + j, N - 1u) * K; }
  var acc: array<array<vec4<f32>, NV>, TM>;  // acc[i][v][c]: row m0 + i, column n0 + 4v + c
  let k4 = K & ~3u;
  for (var k = 0u; k < k4; k += 4u) {
    var wk: array<array<vec4<f32>, 4>, NV>;  // wk[v][kk][c] = W[n0 + 4v + c, k + kk]
    for (var v = 0u; v < NV; v++) {
      let a = w4(wr[4u * v] + k);
      let b = w4(wr[4u * v + 1u] + k);
      let c = w4(wr[4u * v + 2u] + k);
      let d = w4(wr[4u * v + 3u] + k);
      wk[v][0] = vec4(a.x, b.x, c.x, d.x);
      wk[v][1] = vec4(a.y, b.y, c.y, d.y);
      wk[v][2] = vec4(a.z, b.z, c.z, d.z);
      wk[v][3] = vec4(a.w, b.w, c.w, d.w);
    }
    for (var i = 0u; i < TM; i++) {
      let xv = x4(xr[i] + k);
      for (var v = 0u; v < NV; v++) {
        var s = acc[i][v];
        s = fma(vec4(xv.x), wk[v][0], s);
        s = fma(vec4(xv.y), wk[v][1], s);
        s = fma(vec4(xv.z), wk[v][2], s);
        s = fma(vec4(xv.w), wk[v][3], s);
        acc[i][v] = s;
      }
    }
  }
  for (var k = k4; k < K; k++) {
    for (var v = 0u; v < NV; v++) {
      let wk = vec4(w1(wr[4u * v] + k), w1(wr[4u * v + 1u] + k), w1(wr[4u * v + 2u] + k),
                    w1(wr[4u * v + 3u] + k));
      for (var i = 0u; i < TM; i++) { acc[i][v] = fma(vec4(x1(xr[i] + k)), wk, acc[i][v]); }
    }
  }
  for (var i = 0u; i < TM; i++) {
    let m = m0 + i;
    if (m >= M) { break; }
    for (var j = 0u; j < TN; j++) {
      let n = n0 + j;
      if (n >= N) { break; }
      let idx = m * N_TOTAL + COL_OFFSET + n;
      let v = acc[i][j / 4u][j % 4u];
      if (ACCUMULATE) { y[idx] += v; } else { y[idx] = v; }
    }
  }
}
