// Merges a decode row's flash-decoding pieces, one workgroup per (query head,
// decode row), in key order with lse_merge, and writes the attention output.
// Source: attention_lse.wgsl followed by this file.

override HQ: u32;            // query heads
override D: u32;             // head dim
override PIECE: u32;         // keys per piece
override NP: u32;            // pieces per row in the partials

@group(0) @binding(0) var<storage, read> positions: array<u32>;    // (T)
@group(0) @binding(1) var<storage, read> decode_rows: array<u32>;  // (DR) token index of each decode row
@group(0) @binding(2) var<storage, read> parts: array<f32>;        // (DR, HQ, NP, D + 2) Σ p·v, m, l
@group(0) @binding(3) var<storage, read_write> out: array<f32>;    // (T, HQ·D)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let h = wid.x;
  let dr = wid.y;
  let token = decode_rows[dr];
  let pieces = positions[token] / PIECE + 1u;
  let base = (dr * HQ + h) * NP * (D + 2u);
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
