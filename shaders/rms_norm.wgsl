// RMSNorm: out[r] = w ⊙ x[src(r)] / sqrt(mean(x[src(r)]²) + EPS), in f32.
// With GATHER, row r reads x[rows[r]] and there are step.num_rows rows (the
// output rows: the last token of each sequence that samples, then the tokens
// whose hidden state is returned); otherwise step.num_tokens.

override HIDDEN: u32;     // H
override EPS: f32;
override GATHER: bool;
override WG: u32 = 128u;

// The step uniform (STEP_UNIFORM_BYTES in engine/gpu/kernels.ts): T tokens, R output
// rows (the L sample rows first, then hidden-state rows), L sample rows.
struct Step { num_tokens: u32, num_rows: u32, num_logit_rows: u32, pad: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> x: array<f32>;           // (T, H)
@group(0) @binding(2) var<storage, read> w: array<f32>;           // (H)
@group(0) @binding(3) var<storage, read> rows: array<u32>;        // (R) token index per row
@group(0) @binding(4) var<storage, read_write> out: array<f32>;   // (T or R, H)

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let r = wid.x;
  let count = select(step.num_tokens, step.num_rows, GATHER);
  if (r >= count) { return; }
  let src = select(r, rows[r], GATHER) * HIDDEN;
  var sum = 0.0;
  for (var c = lid.x; c < HIDDEN; c += WG) {
    let v = x[src + c];
    sum += v * v;
  }
  partial[lid.x] = sum;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
    if (lid.x < stride) { partial[lid.x] += partial[lid.x + stride]; }
    workgroupBarrier();
  }
  let scale = inverseSqrt(partial[0] / f32(HIDDEN) + EPS);
  for (var c = lid.x; c < HIDDEN; c += WG) {
    out[r * HIDDEN + c] = w[c] * (x[src + c] * scale);
  }
}
