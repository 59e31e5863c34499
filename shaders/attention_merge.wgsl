// Merges each token's attention pieces (written by attention_piece.wgsl), one
// workgroup per (query head, token), in key order with the log-sum-exp
// formula, and writes the attention output.

override HQ: u32;            // query heads
override D: u32;             // head dim
override PIECE: u32;         // keys per piece
override NP: u32;            // pieces per token in the partials

@group(0) @binding(0) var<storage, read> positions: array<u32>;    // (T)
@group(0) @binding(1) var<storage, read> parts: array<f32>;        // (T, HQ, NP, D + 2) Σ p·v, m, l
@group(0) @binding(2) var<storage, read_write> out: array<f32>;    // (T, HQ·D)

/**
 * Merges a piece's (m, l) into the running (M, L). Returns (M', L', a, b): the
 * running output becomes O' = O·a + acc·b, i.e. fma(O, a, acc · b).
 */
fn lse_merge(run_m: f32, run_l: f32, m: f32, l: f32) -> vec4<f32> {
  let mx = max(run_m, m);
  let a = exp(run_m - mx);
  let b = exp(m - mx);
  return vec4(mx, fma(run_l, a, l * b), a, b);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let h = wid.x;
  let token = wid.y;
  let pieces = positions[token] / PIECE + 1u;
  let base = (token * HQ + h) * NP * (D + 2u);
  for (var d = lid.x; d < D; d += 64u) {
    var m = parts[base + D];
    var l = parts[base + D + 1u];
    var o = parts[base + d];
    for (var p = 1u; p < pieces; p++) {
      let at = base + p * (D + 2u);
      let w = lse_merge(m, l, parts[at + D], parts[at + D + 1u]);
      o = fma(o, w.z, parts[at + d] * w.w);
      m = w.x;
      l = w.y;
    }
    out[token * HQ * D + h * D + d] = o / l;
  }
}
