// SwiGLU activation: out[t, i] = silu(gate[t, i]) · up[t, i], silu(z) = z · sigmoid(z).

override I: u32;  // intermediate size

// The step uniform (STEP_UNIFORM_BYTES in engine/gpu/kernels.ts): T tokens, R output
// rows (the L sample rows first, then hidden-state rows), L sample rows.
struct Step { num_tokens: u32, num_rows: u32, num_logit_rows: u32, pad: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> gate_up: array<f32>;   // (T, 2·I): gate | up
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (T, I)

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.y;
  let i = gid.x;
  if (t >= step.num_tokens || i >= I) { return; }
  let g = gate_up[t * 2u * I + i];
  let u = gate_up[t * 2u * I + I + i];
  out[t * I + i] = g / (1.0 + exp(-g)) * u;
}
