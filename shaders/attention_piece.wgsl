// Flash attention over fixed pieces of the context: one workgroup per (piece of
// PIECE keys, tile of up to ROWS / HEADS consecutive tokens of one sequence,
// chunk of HEADS query heads of one KV group). The piece's K and V are staged
// once for all the tile's query rows, and each row's partial (acc, m, l) over
// the piece is written; attention_merge.wgsl merges a token's pieces in key
// order. Decode rows are tiles of one token (a pipeline with ROWS = HEADS and
// 64 invocations); prefill chunks are tiles of several tokens (ROWS = tokens ·
// HEADS, 256 invocations). Same arithmetic either way, so a token's output does
// not depend on which tile, kernel shape or step it is computed in.
// Source: attention_tile.wgsl followed by this file.

@group(0) @binding(6) var<storage, read> tiles: array<u32>;          // (tiles, 2) first token, token count
@group(0) @binding(7) var<storage, read_write> parts: array<f32>;    // (T, HQ, NP, D + 2) piece Σ p·v, m, l

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let lid = lid3.x;
  let piece = wid.x;
  let p0 = piece * PIECE;
  let chunks = HQ / HKV / HEADS;
  let kvh = wid.z / chunks;
  let h0 = kvh * (HQ / HKV) + (wid.z % chunks) * HEADS;
  let t0 = tiles[2u * wid.y];
  let n = tiles[2u * wid.y + 1u];
  if (lid == 0u) {
    let last = positions[t0 + n - 1u];
    tile = Tile(seq_of[t0] * MAX_BLOCKS, kvh, last, select(0u, 1u, p0 > last));
  }
  let width = (HQ + 2u * HKV) * D;
  for (var r = lid; r < ROWS; r += WG) {
    let qi = r / HEADS;
    row_q[r] = (t0 + qi) * width + (h0 + r % HEADS) * D;
    row_last[r] = select(INACTIVE, positions[t0 + qi], qi < n);
  }
  var acc: array<f32, ACC>;
  begin_piece(lid, &acc);
  let t = workgroupUniformLoad(&tile);
  if (t.skip == 1u) { return; }
  run_piece(lid, t, p0, &acc);
  // Rows whose position is before p0 do not see this piece and write nothing.
  for (var i = 0u; i < ACC; i++) {
    let e = lid + i * WG;
    if (e >= ROWS * D) { break; }
    let r = e / D;
    if (row_last[r] == INACTIVE || row_last[r] < p0) { continue; }
    let at = (((t0 + r / HEADS) * HQ + h0 + r % HEADS) * NP + piece) * (D + 2u);
    parts[at + e % D] = acc[i];
  }
  for (var r = lid; r < ROWS; r += WG) {
    if (row_last[r] == INACTIVE || row_last[r] < p0) { continue; }
    let at = (((t0 + r / HEADS) * HQ + h0 + r % HEADS) * NP + piece) * (D + 2u) + D;
    parts[at] = row_m[r];
    parts[at + 1u] = row_l[r];
  }
}
