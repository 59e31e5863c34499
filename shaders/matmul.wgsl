// Register-tiled matmul for prefill-sized batches:
//   y[m, COL_OFFSET + n] (+)= Σ_k x[m, k] · W[n, k]      (W in torch [out, in] layout)
// for one row shard of W (N of its rows). Each 16×16 workgroup computes a
// 64×64 output tile, each invocation 4×4 outputs, stepping K by 16.

override K: u32;             // input features
override N: u32;             // output features held by this weight shard
override N_TOTAL: u32;       // row stride of y
override COL_OFFSET: u32;    // first column of y this shard writes
override BF16: bool;         // W holds bf16 pairs (else f32 bits)
override ACCUMULATE: bool;   // add to y instead of overwriting (fused residual add)
override M_FROM_ROWS: bool;  // M is step.num_logit_rows instead of step.num_tokens

const TM = 4u;
const TN = 4u;
const BM = 64u;
const BN = 64u;
const BK = 16u;

struct Step { num_tokens: u32, num_rows: u32, num_logit_rows: u32, pad: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (M, K)
@group(0) @binding(2) var<storage, read> w: array<u32>;          // (N, K) bf16 pairs or f32
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // (M, N_TOTAL)

var<workgroup> xs: array<f32, 1024>;  // (BK, BM)
var<workgroup> ws: array<f32, 1024>;  // (BK, BN)

fn weight(e: u32) -> f32 {
  if (BF16) {
    let bits = w[e >> 1u];
    return select(bitcast<f32>(bits << 16u), bitcast<f32>(bits & 0xffff0000u), (e & 1u) == 1u);
  }
  return bitcast<f32>(w[e]);
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let M = select(step.num_tokens, step.num_logit_rows, M_FROM_ROWS);
  let row0 = wid.y * BM;
  let col0 = wid.x * BN;
  if (row0 >= M) { return; }
  let flat = lid.y * 16u + lid.x;
  var acc: array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < K; k0 += BK) {
    for (var i = flat; i < BM * BK; i += 256u) {
      let m = i / BK;
      let kk = i % BK;
      let gm = row0 + m;
      let gk = k0 + kk;
      var v = 0.0;
      if (gm < M && gk < K) { v = x[gm * K + gk]; }
      xs[kk * BM + m] = v;
    }
    for (var i = flat; i < BN * BK; i += 256u) {
      let n = i / BK;
      let kk = i % BK;
      let gn = col0 + n;
      let gk = k0 + kk;
      var v = 0.0;
      if (gn < N && gk < K) { v = weight(gn * K + gk); }
      ws[kk * BN + n] = v;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
      var a: array<f32, 4>;
      var b: array<f32, 4>;
      for (var i = 0u; i < TM; i++) { a[i] = xs[kk * BM + lid.y + 16u * i]; }
      for (var j = 0u; j < TN; j++) { b[j] = ws[kk * BN + lid.x + 16u * j]; }
      for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) { acc[i][j] = fma(a[i], b[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < TM; i++) {
    let m = row0 + lid.y + 16u * i;
    if (m >= M) { continue; }
    for (var j = 0u; j < TN; j++) {
      let n = col0 + lid.x + 16u * j;
      if (n >= N) { continue; }
      let idx = m * N_TOTAL + COL_OFFSET + n;
      if (ACCUMULATE) { y[idx] += acc[i][j]; } else { y[idx] = acc[i][j]; }
    }
  }
}
