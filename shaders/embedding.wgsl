// Embedding gather for one shard of the table: rows [ROW_START, ROW_START + ROWS).
// Tokens whose id falls outside the shard are left for the other shards' dispatches.

override HIDDEN: u32;      // H
override ROW_START: u32;   // first vocabulary row held by this shard
override ROWS: u32;        // rows held by this shard
override BF16: bool;       // table holds bf16 pairs (else f32 bits)

// The step uniform (STEP_UNIFORM_BYTES in engine/gpu/kernels.ts): T tokens, R output
// rows (the L sample rows first, then hidden-state rows), L sample rows.
struct Step { num_tokens: u32, num_rows: u32, num_logit_rows: u32, pad: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read> ids: array<u32>;        // (T)
@group(0) @binding(2) var<storage, read> table: array<u32>;      // (ROWS, H) bf16 pairs or f32
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (T, H)

fn weight(e: u32) -> f32 {
  if (BF16) {
    let bits = table[e >> 1u];
    return select(bitcast<f32>(bits << 16u), bitcast<f32>(bits & 0xffff0000u), (e & 1u) == 1u);
  }
  return bitcast<f32>(table[e]);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.y;
  let c = gid.x;
  if (t >= step.num_tokens || c >= HIDDEN) { return; }
  let id = ids[t];
  if (id < ROW_START || id >= ROW_START + ROWS) { return; }
  out[t * HIDDEN + c] = weight((id - ROW_START) * HIDDEN + c);
}
