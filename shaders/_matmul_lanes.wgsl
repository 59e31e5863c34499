// Prelude of the gpu-class matmul kernels (gemv_gpu.wgsl, matmul_gpu.wgsl), put after
// _matmul_io.wgsl by engine/gpu/registry.ts: the pieces of their common summation order.
//
// Summation order (the gpu class's contract): K is cut into chunks of 4 (the last one
// padded with zeros); lane l sums chunks l, l + LANES, … in that order, each chunk as
// fma(x, w, acc) over its 4 elements in k order (`fma_chunk`), from acc = 0.0; the LANES
// partial sums are then added in the fixed tree of `tree8`. So a row's result is
// bit-identical whichever of the two kernels ran and whatever else is in the batch.

const LANES = 8u;  // k lanes per output: the 8 operands of tree8

// Chunk c of x row m: x[m, 4c .. 4c+3], zeros past K.
fn x_chunk(m: u32, c: u32) -> vec4<f32> {
  if (K % 4u == 0u) { return x4(m * K + 4u * c); }
  var v = vec4(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (4u * c + i < K) { v[i] = x1(m * K + 4u * c + i); }
  }
  return v;
}

// Chunk c of W row n: W[n, 4c .. 4c+3], zeros past K.
fn w_chunk(n: u32, c: u32) -> vec4<f32> {
  if (K % 4u == 0u) { return w4(n * K + 4u * c); }
  var v = vec4(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (4u * c + i < K) { v[i] = w1(n * K + 4u * c + i); }
  }
  return v;
}

// acc + x · w over one chunk, element by element in k order.
fn fma_chunk(xv: vec4<f32>, wv: vec4<f32>, acc: f32) -> f32 {
  var s = fma(xv.x, wv.x, acc);
  s = fma(xv.y, wv.y, s);
  s = fma(xv.z, wv.z, s);
  return fma(xv.w, wv.w, s);
}

// The fixed tree over the LANES = 8 lane sums.
fn tree8(p0: f32, p1: f32, p2: f32, p3: f32, p4: f32, p5: f32, p6: f32, p7: f32) -> f32 {
  return ((p0 + p4) + (p2 + p6)) + ((p1 + p5) + (p3 + p7));
}
