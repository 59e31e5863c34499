// Causal grouped-query attention over the paged KV cache, one workgroup per
// (token, query head). The token at position p attends to positions 0..p of
// its own sequence, read through that sequence's block table, with an online
// softmax over chunks of 64 keys (f32 throughout). The cache holds f32 bits, or
// with KV_F16 f16 pairs packed in u32.

override HQ: u32;          // query heads
override HKV: u32;         // key/value heads (query head h reads kv head h / (HQ / HKV))
override D: u32;           // head dim (≤ 256)
override BLOCK: u32;       // tokens per KV block
override MAX_BLOCKS: u32;  // block-table row length
override SCALE: f32;       // 1 / sqrt(D)
override KV_F16: bool = false;  // the cache holds f16 pairs

const C = 64u;             // keys per chunk = invocations per workgroup
const DPT = 4u;            // output dims per invocation (D ≤ C · DPT)
const NEG = -3.0e38;

// The step uniform (STEP_UNIFORM_BYTES in engine/gpu/kernels.ts): T tokens, R output
// rows (the L sample rows first, then hidden-state rows), L sample rows.
struct Step { num_tokens: u32, num_rows: u32, num_logit_rows: u32, pad: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;          // (T, (HQ + 2·HKV)·D)
@group(0) @binding(2) var<storage, read> positions: array<u32>;    // (T)
@group(0) @binding(3) var<storage, read> seq_of: array<u32>;       // (T) batch row of the token's sequence
@group(0) @binding(4) var<storage, read> block_table: array<u32>;  // (S, MAX_BLOCKS)
@group(0) @binding(5) var<storage, read> k_cache: array<u32>;      // (slots, HKV, D) f32 | (slots, HKV, D/2) f16x2
@group(0) @binding(6) var<storage, read> v_cache: array<u32>;      // same as k_cache
@group(0) @binding(7) var<storage, read_write> out: array<f32>;    // (T, HQ·D)

var<workgroup> q: array<f32, D>;
var<workgroup> red: array<f32, C>;
var<workgroup> probs: array<f32, C>;
var<workgroup> key_base: array<u32, C>;
var<workgroup> context_len: u32;

/** Element i of the K (or V) cache as f32. */
fn cache_at(i: u32, values: bool) -> f32 {
  if (KV_F16) {
    var w: u32;
    if (values) { w = v_cache[i / 2u]; } else { w = k_cache[i / 2u]; }
    return unpack2x16float(w)[i % 2u];
  }
  if (values) { return bitcast<f32>(v_cache[i]); }
  return bitcast<f32>(k_cache[i]);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let t = wid.x;
  let h = wid.y;
  if (t >= step.num_tokens) { return; }
  let kvh = h / (HQ / HKV);
  let width = (HQ + 2u * HKV) * D;
  for (var d = lid.x; d < D; d += C) { q[d] = qkv[t * width + h * D + d] * SCALE; }
  if (lid.x == 0u) { context_len = positions[t] + 1u; }
  let len = workgroupUniformLoad(&context_len);
  let table = seq_of[t] * MAX_BLOCKS;

  var m = NEG;
  var l = 0.0;
  var acc: array<f32, 4>;
  for (var c0 = 0u; c0 < len; c0 += C) {
    let j = c0 + lid.x;
    var s = NEG;
    if (j < len) {
      let slot = block_table[table + j / BLOCK] * BLOCK + j % BLOCK;
      let base = (slot * HKV + kvh) * D;
      key_base[lid.x] = base;
      var dot = 0.0;
      for (var d = 0u; d < D; d++) { dot = fma(q[d], cache_at(base + d, false), dot); }
      s = dot;
    }
    red[lid.x] = s;
    workgroupBarrier();
    for (var stride = C / 2u; stride > 0u; stride /= 2u) {
      if (lid.x < stride) { red[lid.x] = max(red[lid.x], red[lid.x + stride]); }
      workgroupBarrier();
    }
    let m_new = max(m, red[0]);
    workgroupBarrier();
    var p = 0.0;
    if (j < len) { p = exp(s - m_new); }
    probs[lid.x] = p;
    red[lid.x] = p;
    workgroupBarrier();
    for (var stride = C / 2u; stride > 0u; stride /= 2u) {
      if (lid.x < stride) { red[lid.x] += red[lid.x + stride]; }
      workgroupBarrier();
    }
    let corr = exp(m - m_new);
    l = l * corr + red[0];
    m = m_new;
    let n = min(C, len - c0);
    for (var k = 0u; k < DPT; k++) {
      let d = lid.x + k * C;
      if (d >= D) { break; }
      var a = acc[k] * corr;
      for (var jj = 0u; jj < n; jj++) { a = fma(probs[jj], cache_at(key_base[jj] + d, true), a); }
      acc[k] = a;
    }
    workgroupBarrier();
  }
  for (var k = 0u; k < DPT; k++) {
    let d = lid.x + k * C;
    if (d >= D) { break; }
    out[t * HQ * D + h * D + d] = acc[k] / l;
  }
}
