// Tiled attention for prefill chunks: one workgroup per (tile of up to ROWS / HEADS
// consecutive tokens of one sequence, KV group chunk of HEADS query heads), so
// ROWS query rows (positions × heads) share every staged K/V sub-tile. The workgroup
// walks the pieces in key order and merges each into the rows' running output
// with lse_merge, exactly as attention_merge.wgsl merges flash-decoding pieces.
// Source: attention_tile.wgsl, attention_lse.wgsl, then this file.

@group(0) @binding(6) var<storage, read> tiles: array<u32>;         // (tiles, 2) first token, token count
@group(0) @binding(7) var<storage, read_write> out: array<f32>;     // (T, HQ·D)

var<workgroup> run_m: array<f32, ROWS>;      // running max over merged pieces
var<workgroup> run_l: array<f32, ROWS>;      // running sum over merged pieces

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let lid = lid3.x;
  let chunks = HQ / HKV / HEADS;
  let kvh = wid.y / chunks;
  let h0 = kvh * (HQ / HKV) + (wid.y % chunks) * HEADS;
  let t0 = tiles[2u * wid.x];
  let n = tiles[2u * wid.x + 1u];
  if (lid == 0u) {
    tile = Tile(seq_of[t0] * MAX_BLOCKS, kvh, positions[t0 + n - 1u], 0u);
  }
  let width = (HQ + 2u * HKV) * D;
  for (var r = lid; r < ROWS; r += WG) {
    let qi = r / HEADS;
    row_q[r] = (t0 + qi) * width + (h0 + r % HEADS) * D;
    row_last[r] = select(INACTIVE, positions[t0 + qi], qi < n);
  }
  let t = workgroupUniformLoad(&tile);
  var acc: array<f32, ACC>;
  var o: array<f32, ACC>;
  for (var p0 = 0u; p0 <= t.last; p0 += PIECE) {
    begin_piece(lid, &acc);
    workgroupBarrier();
    run_piece(lid, t, p0, &acc);
    // Rows whose position is before p0 do not see this piece.
    for (var i = 0u; i < ACC; i++) {
      let e = lid + i * WG;
      if (e >= ROWS * D) { break; }
      let r = e / D;
      if (row_last[r] == INACTIVE || row_last[r] < p0) { continue; }
      if (p0 == 0u) {
        o[i] = acc[i];
      } else {
        let w = lse_merge(run_m[r], run_l[r], row_m[r], row_l[r]);
        o[i] = fma(o[i], w.z, acc[i] * w.w);
      }
    }
    workgroupBarrier();
    for (var r = lid; r < ROWS; r += WG) {
      if (row_last[r] == INACTIVE || row_last[r] < p0) { continue; }
      if (p0 == 0u) {
        run_m[r] = row_m[r];
        run_l[r] = row_l[r];
      } else {
        let w = lse_merge(run_m[r], run_l[r], row_m[r], row_l[r]);
        run_m[r] = w.x;
        run_l[r] = w.y;
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < ACC; i++) {
    let e = lid + i * WG;
    if (e >= ROWS * D) { break; }
    let r = e / D;
    if (row_last[r] == INACTIVE) { continue; }
    let token = t0 + r / HEADS;
    out[token * HQ * D + (h0 + r % HEADS) * D + e % D] = o[i] / run_l[r];
  }
}
