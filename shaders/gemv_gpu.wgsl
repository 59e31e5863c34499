// GPU-class matrix-vector product for batches of a few rows (decode):
//   y[m, COL_OFFSET + n] (+)= Σ_k x[m, k] · W[n, k]      (W in torch [out, in] layout)
// for one row shard of W (N of its rows). A workgroup computes ROWS outputs of one row m;
// each output's K is split across LANES adjacent invocations, so a row of W is read by
// LANES invocations side by side (coalesced), and N = 1024 still launches 1024 / ROWS
// workgroups.
//
// Summation order: the gpu class's, in _matmul_lanes.wgsl (shared with matmul_gpu.wgsl),
// so a row's result is bit-identical whichever of the two kernels ran and whatever else
// is in the batch.

// Prelude (prepended by engine/gpu/registry.ts): _matmul_io.wgsl (the overrides K, N,
// N_TOTAL, COL_OFFSET, BF16, ACCUMULATE, M_FROM_ROWS, the bindings step, x, w, y and
// their readers), then _matmul_lanes.wgsl (LANES, x_chunk, w_chunk, fma_chunk, tree8).

override ROWS: u32 = 8u;     // outputs per workgroup (set by engine/gpu/registry.ts)

var<workgroup> partial: array<f32, LANES * ROWS>;  // (ROWS, LANES) lane sums

@compute @workgroup_size(LANES * ROWS)
fn main(
  @builtin(workgroup_id) wg: vec3<u32>,
  @builtin(local_invocation_index) li: u32,
) {
  let M = m_count();
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
