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

// Prelude (prepended by engine/gpu/registry.ts): _matmul_io.wgsl, with the overrides
// K, N, N_TOTAL, COL_OFFSET, BF16, ACCUMULATE, M_FROM_ROWS, the bindings step, x, w, y
// and the readers x1, x4, w1, w4 that matmul.wgsl uses too.

const WG = 64u;  // invocations per workgroup, along n (4 columns per invocation)

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let M = m_count();
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
