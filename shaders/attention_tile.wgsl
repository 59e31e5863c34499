// The per-piece arithmetic of GPU-class attention, the first half of the
// source of attention_piece.wgsl (kept apart so each half reads in one sitting).
//
// A workgroup serves ROWS query rows (query positions × HEADS query heads of one
// KV group) of one sequence over one piece of the context. The context is cut
// into pieces of PIECE keys at fixed absolute positions (0, PIECE, 2·PIECE, ...),
// never by the batch, each piece into sub-tiles of KT keys. Per sub-tile the K tile is staged through shared memory (read once
// for all rows), every row's scores are computed, its online softmax (m, l)
// updated in key order, then the V tile is staged and every row's accumulator
// updated in key order. A row only sees keys ≤ its own position (causal).
//
// KV cache layout: (slots, HKV, D) per layer, f32 bits in u32, or with KV_F16
// f16 pairs packed in u32 (pack2x16float, core WGSL: no shader-f16 needed).

override HQ: u32;            // query heads
override HKV: u32;           // key/value heads (query head h reads kv head h / (HQ / HKV))
override D: u32;             // head dim (even, ≤ 256)
override BLOCK: u32;         // tokens per KV block
override MAX_BLOCKS: u32;    // block-table row length
override SCALE: f32;         // 1 / sqrt(D)
override KV_F16: bool;       // cache holds f16 pairs
override HEADS: u32;         // query heads per workgroup (divides HQ / HKV)
override ROWS: u32;          // query rows per workgroup (≤ WG)
override WG: u32;            // invocations per workgroup
override PIECE: u32;         // keys per piece (a multiple of KT)
override NP: u32;            // pieces per token in the partials
// (Every override is declared here, before any function: naga 29 panics on an
// override declared after functions that use overrides.)

const KT = 16u;              // keys per sub-tile
const ACC = 32u;             // output elements per invocation: ROWS · D ≤ WG · ACC
const NEG = -3.0e38;
const INACTIVE = 0xffffffffu;

@group(0) @binding(0) var<storage, read> qkv: array<f32>;          // (T, (HQ + 2·HKV)·D)
@group(0) @binding(1) var<storage, read> positions: array<u32>;    // (T)
@group(0) @binding(2) var<storage, read> seq_of: array<u32>;       // (T) block-table row of the token
@group(0) @binding(3) var<storage, read> block_table: array<u32>;  // (S, MAX_BLOCKS)
@group(0) @binding(4) var<storage, read> k_cache: array<u32>;      // (slots, HKV, D) f32 | (slots, HKV, D/2) f16x2
@group(0) @binding(5) var<storage, read> v_cache: array<u32>;      // same as k_cache

/** What every invocation of a workgroup agrees on. */
struct Tile {
  table: u32,  // offset of the sequence's block-table row
  kvh: u32,    // KV head
  last: u32,   // largest position among the rows (keys 0..last are read)
  skip: u32,   // 1 when the workgroup has nothing to do
}

var<workgroup> tile: Tile;
var<workgroup> kv: array<f32, KT * (D + 1u)>;   // (KT, D + 1): K or V sub-tile, padded rows
var<workgroup> probs: array<f32, ROWS * KT>;     // (ROWS, KT) scores, then probabilities
var<workgroup> row_q: array<u32, ROWS>;          // qkv offset of the row's query vector
var<workgroup> row_last: array<u32, ROWS>;       // the row's position, or INACTIVE
var<workgroup> row_m: array<f32, ROWS>;          // running max within the current piece
var<workgroup> row_l: array<f32, ROWS>;          // running sum of exp within the current piece
var<workgroup> row_corr: array<f32, ROWS>;       // exp(old m − new m) of the last sub-tile

/** Keys of the sub-tile starting at key0 that row r attends to. */
fn keys_for(r: u32, key0: u32) -> u32 {
  let last = row_last[r];
  if (last == INACTIVE || key0 > last) { return 0u; }
  return min(KT, last + 1u - key0);
}

/** Stages the K (or V) vectors of keys key0.. into kv, converting to f32. */
fn stage(lid: u32, t: Tile, key0: u32, values: bool) {
  let pairs = D / 2u;
  let n = min(KT, t.last + 1u - key0);
  for (var e = lid; e < n * pairs; e += WG) {
    let j = e / pairs;
    let d = 2u * (e % pairs);
    let key = key0 + j;
    let slot = block_table[t.table + key / BLOCK] * BLOCK + key % BLOCK;
    let i = (slot * HKV + t.kvh) * D + d;
    var x: vec2<f32>;
    if (KV_F16) {
      if (values) { x = unpack2x16float(v_cache[i / 2u]); } else { x = unpack2x16float(k_cache[i / 2u]); }
    } else if (values) {
      x = vec2(bitcast<f32>(v_cache[i]), bitcast<f32>(v_cache[i + 1u]));
    } else {
      x = vec2(bitcast<f32>(k_cache[i]), bitcast<f32>(k_cache[i + 1u]));
    }
    kv[j * (D + 1u) + d] = x.x;
    kv[j * (D + 1u) + d + 1u] = x.y;
  }
}

/** probs[r][j] = (q_r · SCALE) · k_j, summed over d in order. */
fn scores(lid: u32, key0: u32) {
  for (var e = lid; e < ROWS * KT; e += WG) {
    let r = e / KT;
    let j = e % KT;
    if (j < keys_for(r, key0)) {
      let q0 = row_q[r];
      var dot = 0.0;
      for (var d = 0u; d < D; d++) { dot = fma(qkv[q0 + d] * SCALE, kv[j * (D + 1u) + d], dot); }
      probs[e] = dot;
    }
  }
}

/** Online softmax of each row over the sub-tile, keys in order: updates m, l and corr. */
fn softmax_rows(lid: u32, key0: u32) {
  for (var r = lid; r < ROWS; r += WG) {
    let n = keys_for(r, key0);
    if (n == 0u) {
      row_corr[r] = 1.0;
      continue;
    }
    let m_old = row_m[r];
    var m = m_old;
    for (var j = 0u; j < n; j++) { m = max(m, probs[r * KT + j]); }
    var sum = 0.0;
    for (var j = 0u; j < n; j++) {
      let p = exp(probs[r * KT + j] - m);
      probs[r * KT + j] = p;
      sum += p;
    }
    let corr = exp(m_old - m);
    row_l[r] = fma(row_l[r], corr, sum);
    row_m[r] = m;
    row_corr[r] = corr;
  }
}

/** acc[(r, d)] = acc · corr_r + Σ_j p_rj · v_j[d], keys in order. */
fn accumulate(lid: u32, key0: u32, acc: ptr<function, array<f32, ACC>>) {
  for (var i = 0u; i < ACC; i++) {
    let e = lid + i * WG;
    if (e >= ROWS * D) { break; }
    let r = e / D;
    let d = e % D;
    let n = keys_for(r, key0);
    if (n == 0u) { continue; }
    var a = (*acc)[i] * row_corr[r];
    for (var j = 0u; j < n; j++) { a = fma(probs[r * KT + j], kv[j * (D + 1u) + d], a); }
    (*acc)[i] = a;
  }
}

/** Resets every row's (m, l) and this invocation's accumulators for a new piece. */
fn begin_piece(lid: u32, acc: ptr<function, array<f32, ACC>>) {
  for (var r = lid; r < ROWS; r += WG) {
    row_m[r] = NEG;
    row_l[r] = 0.0;
  }
  for (var i = 0u; i < ACC; i++) { (*acc)[i] = 0.0; }
}

/** Runs the piece starting at key p0 for every row: (row_m, row_l) and acc hold its partials. */
fn run_piece(lid: u32, t: Tile, p0: u32, acc: ptr<function, array<f32, ACC>>) {
  let end = min(p0 + PIECE, t.last + 1u);
  for (var key0 = p0; key0 < end; key0 += KT) {
    stage(lid, t, key0, false);
    workgroupBarrier();
    scores(lid, key0);
    workgroupBarrier();
    softmax_rows(lid, key0);
    stage(lid, t, key0, true);
    workgroupBarrier();
    accumulate(lid, key0, acc);
    workgroupBarrier();
  }
}
