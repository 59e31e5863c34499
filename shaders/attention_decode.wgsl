// Flash-decoding: one workgroup per (piece of PIECE keys, decode row, KV group
// chunk of HEADS query heads). It reads the piece's K and V once for all the
// group's query heads and writes each head's partial (m, l, acc) over the
// piece; attention_merge.wgsl then merges the pieces in key order.
// Source: attention_tile.wgsl followed by this file.

@group(0) @binding(6) var<storage, read> decode_rows: array<u32>;   // (DR) token index of each decode row
@group(0) @binding(7) var<storage, read_write> parts: array<f32>;    // (DR, HQ, NP, D + 2) piece Σ p·v, m, l

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let lid = lid3.x;
  let piece = wid.x;
  let dr = wid.y;
  let chunks = HQ / HKV / HEADS;
  let kvh = wid.z / chunks;
  let h0 = kvh * (HQ / HKV) + (wid.z % chunks) * HEADS;
  let token = decode_rows[dr];
  let pos = positions[token];
  if (lid == 0u) {
    tile = Tile(seq_of[token] * MAX_BLOCKS, kvh, pos, select(0u, 1u, piece * PIECE > pos));
  }
  let width = (HQ + 2u * HKV) * D;
  for (var r = lid; r < ROWS; r += WG) {
    row_q[r] = token * width + (h0 + r) * D;
    row_last[r] = pos;
  }
  var acc: array<f32, ACC>;
  begin_piece(lid, &acc);
  let t = workgroupUniformLoad(&tile);
  if (t.skip == 1u) { return; }
  run_piece(lid, t, piece * PIECE, &acc);
  for (var i = 0u; i < ACC; i++) {
    let e = lid + i * WG;
    if (e >= ROWS * D) { break; }
    let r = e / D;
    parts[((dr * HQ + h0 + r) * NP + piece) * (D + 2u) + e % D] = acc[i];
  }
  for (var r = lid; r < ROWS; r += WG) {
    let at = ((dr * HQ + h0 + r) * NP + piece) * (D + 2u) + D;
    parts[at] = row_m[r];
    parts[at + 1u] = row_l[r];
  }
}
