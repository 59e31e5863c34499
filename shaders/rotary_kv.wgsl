// Interleaved (GPT-J style) rotary embedding on q and k of each token, in
// place, then the token's k and v appended to the paged KV cache at its slot:
// as f32 bits, or with KV_F16 as f16 pairs packed in u32 (pack2x16float, core
// WGSL: no shader-f16 needed), one rotated pair (2i, 2i+1) per word.
//   out[2i] = x[2i]·cos − x[2i+1]·sin;  out[2i+1] = x[2i+1]·cos + x[2i]·sin
//   angle = (position · POS_SCALE) · inv_freq[i], reduced to [−π, π] before sin/cos.

override HQ: u32;          // query heads
override HKV: u32;         // key/value heads
override D: u32;           // head dim
override POS_SCALE: f32 = 1.0;  // 1 / compression_ratio
override KV_F16: bool = false;  // the cache holds f16 pairs

const TWO_PI_HI = 6.28125;
const TWO_PI_LO = 0.0019353071795864769;
const INV_TWO_PI = 0.15915494309189535;

// The step uniform (STEP_UNIFORM_BYTES in engine/gpu/kernels.ts): T tokens, R output
// rows (the L sample rows first, then hidden-state rows), L sample rows.
struct Step { num_tokens: u32, num_rows: u32, num_logit_rows: u32, pad: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;     // (T, (HQ + 2·HKV)·D)
@group(0) @binding(2) var<storage, read> positions: array<u32>;     // (T)
@group(0) @binding(3) var<storage, read> slots: array<u32>;         // (T) cache slot per token
@group(0) @binding(4) var<storage, read> inv_freq: array<f32>;      // (D / 2)
@group(0) @binding(5) var<storage, read_write> k_cache: array<u32>; // (slots, HKV, D) f32 | (slots, HKV, D/2) f16x2
@group(0) @binding(6) var<storage, read_write> v_cache: array<u32>; // same as k_cache

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let t = wid.x;
  if (t >= step.num_tokens) { return; }
  let width = (HQ + 2u * HKV) * D;
  let row = t * width;
  let pos = f32(positions[t]) * POS_SCALE;
  let slot = slots[t];
  let half = D / 2u;
  for (var p = lid.x; p < (HQ + HKV) * half; p += 64u) {
    let head = p / half;
    let i = p % half;
    let angle = pos * inv_freq[i];
    let n = round(angle * INV_TWO_PI);
    let r = (angle - n * TWO_PI_HI) - n * TWO_PI_LO;
    let c = cos(r);
    let s = sin(r);
    let base = row + head * D + 2u * i;
    let x0 = qkv[base];
    let x1 = qkv[base + 1u];
    let o0 = x0 * c - x1 * s;
    let o1 = x1 * c + x0 * s;
    qkv[base] = o0;
    qkv[base + 1u] = o1;
    if (head >= HQ) {
      let dst = (slot * HKV + head - HQ) * D + 2u * i;
      if (KV_F16) {
        k_cache[dst / 2u] = pack2x16float(vec2(o0, o1));
      } else {
        k_cache[dst] = bitcast<u32>(o0);
        k_cache[dst + 1u] = bitcast<u32>(o1);
      }
    }
  }
  for (var e = 2u * lid.x; e < HKV * D; e += 128u) {
    let v = vec2(qkv[row + (HQ + HKV) * D + e], qkv[row + (HQ + HKV) * D + e + 1u]);
    let dst = slot * HKV * D + e;
    if (KV_F16) {
      v_cache[dst / 2u] = pack2x16float(v);
    } else {
      v_cache[dst] = bitcast<u32>(v.x);
      v_cache[dst + 1u] = bitcast<u32>(v.y);
    }
  }
}
