// Greedy sampling: ids[r] = argmax over the first VALID logits of row r
// (padding vocabulary beyond the tokenizer is never chosen; ties → lowest id).

override VALID: u32;    // real vocabulary size
override STRIDE: u32;   // row length of logits
const WG = 256u;

// The step uniform (STEP_UNIFORM_BYTES in engine/gpu/kernels.ts): T tokens, R output
// rows (the L sample rows first, then hidden-state rows), L sample rows.
struct Step { num_tokens: u32, num_rows: u32, num_logit_rows: u32, pad: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> logits: array<f32>;     // (L, STRIDE)
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;  // (L)

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let r = wid.x;
  if (r >= step.num_logit_rows) { return; }
  var bv = -3.0e38;
  var bi = 0xffffffffu;
  for (var i = lid.x; i < VALID; i += WG) {
    let v = logits[r * STRIDE + i];
    if (v > bv) { bv = v; bi = i; }
  }
  best_v[lid.x] = bv;
  best_i[lid.x] = bi;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lid.x < stride) {
      let ov = best_v[lid.x + stride];
      let oi = best_i[lid.x + stride];
      if (ov > best_v[lid.x] || (ov == best_v[lid.x] && oi < best_i[lid.x])) {
        best_v[lid.x] = ov;
        best_i[lid.x] = oi;
      }
    }
    workgroupBarrier();
  }
  if (lid.x == 0u) { ids[r] = best_i[0]; }
}
