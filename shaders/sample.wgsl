// Sampling on the GPU, one workgroup per logit row: the row's sparse edits (logit bias,
// min_tokens end masks, repetition / presence / frequency penalties) are applied to its
// logits in place, then either the greedy id or one draw from
// softmax(logits / T) truncated by top-k, top-p and min-p (vLLM's order), with the
// uniform number u the host drew from the request's (seed, index, token index) key.
// ids ≥ VALID (padding) are never chosen. A row whose logits have no finite maximum
// gets 0xffffffff, which the engine reports as an internal error. A row with a grammar
// mask (a JSON schema) never picks an id its mask leaves out.
//
// Only the chosen id leaves the GPU. Every reduction runs in a fixed order within the
// row's own workgroup, so a row's draw does not depend on the other rows of the batch.
// Thresholds are found by bisection on the bit pattern of non-negative f32 weights
// (ordered like u32): 31 exact steps for the k-th largest weight and for the top-p cut.

override VALID: u32;       // real vocabulary size
override STRIDE: u32;      // row length of logits
override MASK_WORDS: u32;  // u32 words of one grammar mask: ceil(STRIDE / 32)

const WG = 256u;
const NONE = 0xffffffffu;
const NEG = -3.4e38;
const INF_BITS = 0x7f800000u;

// The step uniform (STEP_UNIFORM_BYTES in engine/gpu/kernels.ts): T tokens, R output
// rows (the L sample rows first, then hidden-state rows), L sample rows.
struct Step { num_tokens: u32, num_rows: u32, num_logit_rows: u32, pad: u32 }

struct Row {
  mode: u32,          // 0: sampled on the CPU (skip), 1: greedy, 2: random
  temperature: f32,
  top_k: u32,         // 0 (or ≥ VALID): off
  top_p: f32,         // ≥ 1: off
  min_p: f32,         // 0: off
  u: f32,             // uniform in [0, 1)
  edit_start: u32,    // first entry of this row in `edits`
  edit_count: u32,
  mask_row: u32,      // this row's grammar mask in `masks` (NONE: every id allowed)
  pad0: u32,
  pad1: u32,
  pad2: u32,
}

// logit' = rep(logit + bias) − sub, rep(v) = v / rep when v > 0 else v · rep.
// A masked id has sub = 3e38.
struct Edit { id: u32, bias: f32, rep: f32, sub: f32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;  // (L, STRIDE); sampled rows are overwritten
@group(0) @binding(2) var<storage, read> rows: array<Row>;          // (L)
@group(0) @binding(3) var<storage, read> edits: array<Edit>;        // (E) all rows' edits
@group(0) @binding(4) var<storage, read_write> ids: array<u32>;     // (L) chosen ids
@group(0) @binding(5) var<storage, read> masks: array<u32>;         // (masked rows, MASK_WORDS) bitsets

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> count: atomic<u32>;
var<workgroup> shared_u: u32;  // a value every invocation reads with workgroupUniformLoad
var<workgroup> shared_f: f32;
var<workgroup> found: u32;

// Whether a row's grammar allows id i (a JSON schema's mask; every id without one).
fn allowed(mask_row: u32, i: u32) -> bool {
  if (mask_row == NONE) { return true; }
  return ((masks[mask_row * MASK_WORDS + (i >> 5u)] >> (i & 31u)) & 1u) == 1u;
}

// Largest value over the workgroup (ties → lowest index), left in red_f[0], red_i[0].
fn reduce_max(lid: u32, v: f32, i: u32) {
  red_f[lid] = v;
  red_i[lid] = i;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s /= 2u) {
    if (lid < s) {
      let ov = red_f[lid + s];
      let oi = red_i[lid + s];
      if (ov > red_f[lid] || (ov == red_f[lid] && oi < red_i[lid])) {
        red_f[lid] = ov;
        red_i[lid] = oi;
      }
    }
    workgroupBarrier();
  }
}

// Sum over the workgroup in a fixed tree order; every invocation gets the total.
fn reduce_sum(lid: u32, v: f32) -> f32 {
  red_f[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s /= 2u) {
    if (lid < s) { red_f[lid] += red_f[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) { shared_f = red_f[0]; }
  return workgroupUniformLoad(&shared_f);
}

// How many weights of the row have bits ≥ t.
fn count_at_least(lid: u32, base: u32, t: u32) -> u32 {
  if (lid == 0u) { atomicStore(&count, 0u); }
  workgroupBarrier();
  var c = 0u;
  for (var i = lid; i < VALID; i += WG) {
    if (bitcast<u32>(logits[base + i]) >= t) { c++; }
  }
  atomicAdd(&count, c);
  workgroupBarrier();
  if (lid == 0u) { shared_u = atomicLoad(&count); }
  return workgroupUniformLoad(&shared_u);
}

// Mass of the weights of the row with bits ≥ t.
fn mass_at_least(lid: u32, base: u32, t: u32) -> f32 {
  var m = 0.0;
  for (var i = lid; i < VALID; i += WG) {
    let w = logits[base + i];
    if (bitcast<u32>(w) >= t) { m += w; }
  }
  return reduce_sum(lid, m);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>) {
  let r = wid.x;
  let lid = lid3.x;
  if (r >= step.num_logit_rows) { return; }
  let p = rows[r];
  if (p.mode == 0u) { return; }
  let base = r * STRIDE;

  // 1. Edits: distinct ids per row, so no two invocations touch one logit.
  for (var e = lid; e < p.edit_count; e += WG) {
    let ed = edits[p.edit_start + e];
    if (ed.id < VALID) {
      var v = logits[base + ed.id] + ed.bias;
      if (ed.rep != 1.0) { v = select(v * ed.rep, v / ed.rep, v > 0.0); }
      logits[base + ed.id] = v - ed.sub;
    }
  }
  storageBarrier();
  workgroupBarrier();

  // 2. The largest (scaled) logit: the greedy answer, and the softmax's shift.
  let inv_t = select(1.0, 1.0 / p.temperature, p.mode == 2u);
  var bv = NEG;
  var bi = NONE;
  for (var i = lid; i < VALID; i += WG) {
    let v = logits[base + i] * inv_t;
    if (v > bv && allowed(p.mask_row, i)) { bv = v; bi = i; }
  }
  reduce_max(lid, bv, bi);
  if (lid == 0u) { shared_u = red_i[0]; shared_f = red_f[0]; }
  let best = workgroupUniformLoad(&shared_u);
  let top = workgroupUniformLoad(&shared_f);
  if (p.mode == 1u || best == NONE) {
    if (lid == 0u) { ids[r] = best; }
    return;
  }

  // 3. Weights exp(l / T − max) in place (NaN and padding weigh 0; the best weighs 1).
  for (var i = lid; i < VALID; i += WG) {
    let w = exp(logits[base + i] * inv_t - top);
    logits[base + i] = select(0.0, w, w >= 0.0 && allowed(p.mask_row, i));
  }
  storageBarrier();
  workgroupBarrier();

  // 4. Top-k: the k-th largest weight, as the largest t with count(bits ≥ t) ≥ k.
  var cut = 1u;  // bits of the smallest weight kept (1: every non-zero weight)
  if (p.top_k > 0u && p.top_k < VALID) {
    var lo = 0u;
    var hi = INF_BITS;
    loop {
      if (hi - lo <= 1u) { break; }
      let mid = lo + (hi - lo) / 2u;
      if (count_at_least(lid, base, mid) >= p.top_k) { lo = mid; } else { hi = mid; }
    }
    cut = max(cut, lo);
  }

  // 5. Top-p over the top-k set: the largest t whose mass(bits ≥ t) ≥ top_p · mass(kept).
  if (p.top_p < 1.0) {
    let want = p.top_p * mass_at_least(lid, base, cut);
    var lo = cut;
    var hi = INF_BITS;
    loop {
      if (hi - lo <= 1u) { break; }
      let mid = lo + (hi - lo) / 2u;
      if (mass_at_least(lid, base, mid) >= want) { lo = mid; } else { hi = mid; }
    }
    cut = lo;
  }

  // 6. One draw in index order: each invocation owns a contiguous chunk, chunk sums are
  //    scanned in a fixed order, and the chunk holding u · total is walked.
  let chunk = (VALID + WG - 1u) / WG;
  let start = min(lid * chunk, VALID);
  let end = min(start + chunk, VALID);
  var s = 0.0;
  for (var i = start; i < end; i++) {
    let w = logits[base + i];
    if (bitcast<u32>(w) >= cut && w >= p.min_p) { s += w; }
  }
  red_f[lid] = s;
  if (lid == 0u) { found = NONE; }
  workgroupBarrier();
  for (var off = 1u; off < WG; off *= 2u) {  // inclusive scan (Hillis–Steele)
    var add = 0.0;
    if (lid >= off) { add = red_f[lid - off]; }
    workgroupBarrier();
    red_f[lid] += add;
    workgroupBarrier();
  }
  // Chunk lid covers [excl, incl) of [0, total): neighbours share their boundary exactly.
  let incl = red_f[lid];
  var excl = 0.0;
  if (lid > 0u) { excl = red_f[lid - 1u]; }
  let goal = p.u * red_f[WG - 1u];
  if (s > 0.0 && goal >= excl && goal < incl) {
    var acc = excl;
    var pick = NONE;
    for (var i = start; i < end; i++) {
      let w = logits[base + i];
      if (bitcast<u32>(w) >= cut && w >= p.min_p) {
        pick = i;
        acc += w;
        if (goal < acc) { break; }
      }
    }
    found = pick;
  }
  workgroupBarrier();
  if (lid == 0u) { ids[r] = select(found, best, found == NONE); }
}
