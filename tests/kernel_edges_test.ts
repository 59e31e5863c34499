/**
 * Kernels at the edges production reaches and the small random cases of
 * kernels_test.ts do not: RMSNorm rows whose mean square is far below eps,
 * rotary positions past 4096 up to 800,000, and attention over hundreds of
 * keys (many 64-key chunks, whose running maximum changes between chunks).
 */
import type { Gpu } from "../engine/gpu/device.ts";
import * as k from "../engine/gpu/kernels.ts";
import { assertClose, gpuTest, randomArray, rng } from "./_gpu.ts";
import { ropeInterleavedF32Angles } from "./reference.ts";

function stepUniform(gpu: Gpu, numTokens: number, numRows = 0): GPUBuffer {
  const b = gpu.uniform("step", k.STEP_UNIFORM_BYTES);
  gpu.write(b, new Uint32Array([numTokens, numRows, numRows, 0]));
  return b;
}

async function run(gpu: Gpu, dispatches: k.Dispatch[], numTokens: number): Promise<void> {
  await gpu.checked("kernel edge test", () => {
    const encoder = gpu.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    k.encode(pass, dispatches, { numTokens, numRows: 0, numLogitRows: 0 });
    pass.end();
    gpu.device.queue.submit([encoder.finish()]);
  });
}

async function readF32(gpu: Gpu, b: GPUBuffer, n: number): Promise<Float32Array> {
  return new Float32Array(await gpu.read(b, n * 4));
}

gpuTest("rms_norm keeps eps inside the square root on rows of tiny norm", async (gpu) => {
  // Row scales from O(1) down to a mean square 1000× below eps, and an all-zero row: with
  // eps added outside the square root, every row below scale 1e-2 is off by 10% or more.
  const scales = [1, 1e-2, 3e-3, 1e-3, 1e-4, 1e-6, 0];
  const [H, eps] = [203, 1e-5];
  const T = scales.length;
  const r = rng(23);
  const x = new Float32Array(T * H);
  scales.forEach((s, t) => x.set(randomArray(H, r, s), t * H));
  const w = randomArray(H, r);
  const out = gpu.storage("out", T * H * 4);
  const step = stepUniform(gpu, T);
  const d = k.rmsNorm(gpu, step, gpu.upload("x", x), gpu.upload("w", w), out, { hidden: H, eps });
  await run(gpu, [d], T);
  const got = await readF32(gpu, out, T * H);
  for (let t = 0; t < T; t++) {
    const row = x.subarray(t * H, (t + 1) * H);
    let ss = 0;
    for (const v of row) ss += v * v;
    const scale = 1 / Math.sqrt(ss / H + eps);
    const want = Float64Array.from(row, (v, c) => w[c]! * v * scale);
    assertClose(got.subarray(t * H, (t + 1) * H), want, {
      rtol: 1e-4,
      atol: 1e-6 * Math.max(...want.map(Math.abs)),
      what: `row ${t} (scale ${scales[t]})`,
    });
  }
});

gpuTest(
  "rotary_kv reduces large angles: positions past 4096 up to 800,000 match the f32-angle reference",
  async (gpu) => {
    // Angles up to 800,000 rad. Every correct sin/cos of the f32 angle the spec defines
    // (f32 inv_freq × f32 position) is within 1e-5 here; a kernel that hands the raw angle
    // to a GPU's sin/cos loses (angle · 2⁻²⁴) or all of it, depending on the hardware.
    const [HQ, HKV, D, theta] = [2, 1, 64, 500000];
    const positions = Uint32Array.from([
      4095,
      4096,
      4097,
      8191,
      32768,
      65537,
      100_003,
      131_071,
      300_007,
      524_288,
      800_000,
    ]);
    const T = positions.length;
    const W = (HQ + 2 * HKV) * D;
    const r = rng(29);
    const qkv = randomArray(T * W, r);
    const invFreq = Float32Array.from({ length: D / 2 }, (_, i) => Math.pow(theta, (-2 * i) / D));
    const buf = gpu.upload("qkv", qkv);
    const kCache = gpu.storage("k", T * HKV * D * 4);
    const step = stepUniform(gpu, T);
    const d = k.rotaryKv(gpu, step, {
      qkv: buf,
      positions: gpu.upload("p", positions),
      slots: gpu.upload("s", Uint32Array.from(positions, (_, t) => t)),
      invFreq: gpu.upload("f", invFreq),
      kCache,
      vCache: gpu.storage("v", T * HKV * D * 4),
    }, { heads: HQ, kvHeads: HKV, headDim: D, posScale: 1 });
    await run(gpu, [d], T);
    const got = await readF32(gpu, buf, T * W);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < HQ + HKV; h++) {
        const at = t * W + h * D;
        const want = ropeInterleavedF32Angles(qkv.subarray(at, at + D), positions[t]!, invFreq);
        assertClose(got.subarray(at, at + D), want, {
          rtol: 0,
          atol: 1e-5,
          what: `position ${positions[t]} head ${h}`,
        });
      }
    }
  },
);

/** Causal attention of one query row over positions 0..pos of a paged cache, float64. */
function attentionRef(
  q: Float32Array, // (HQ·D) the query row, unscaled
  pos: number,
  table: readonly number[],
  kc: Float32Array, // (slots, HKV, D)
  vc: Float32Array, // (slots, HKV, D)
  shape: { HQ: number; HKV: number; D: number; B: number },
): Float64Array {
  const { HQ, HKV, D, B } = shape;
  const out = new Float64Array(HQ * D); // (HQ·D)
  for (let h = 0; h < HQ; h++) {
    const kvh = Math.floor(h / (HQ / HKV));
    const base = (j: number) => ((table[Math.floor(j / B)]! * B + (j % B)) * HKV + kvh) * D;
    const s = new Float64Array(pos + 1);
    for (let j = 0; j <= pos; j++) {
      let dot = 0;
      for (let e = 0; e < D; e++) dot += q[h * D + e]! * kc[base(j) + e]!;
      s[j] = dot / Math.sqrt(D);
    }
    const m = Math.max(...s);
    const p = s.map((v) => Math.exp(v - m));
    const z = p.reduce((a, b) => a + b, 0);
    for (let j = 0; j <= pos; j++) {
      for (let e = 0; e < D; e++) out[h * D + e]! += (p[j]! / z) * vc[base(j) + e]!;
    }
  }
  return out;
}

gpuTest(
  "attention over hundreds of keys rescales its running sums between 64-key chunks",
  async (gpu) => {
    // Two sequences of 700 and 333 cached positions in scattered blocks of 16; query rows
    // at chunk edges (63, 64, 65, 127, 128), mid-chunk and at the ends. D = 40 is not a
    // multiple of anything the kernel tiles by. Keys grow with position, so the running
    // maximum rises in almost every chunk.
    const [HQ, HKV, D, B] = [4, 2, 40, 16];
    const lengths = [700, 333];
    const W = (HQ + 2 * HKV) * D;
    const r = rng(31);
    const maxBlocks = Math.ceil(lengths[0]! / B);
    const numBlocks = lengths.reduce((a, n) => a + Math.ceil(n / B), 0);
    const order = Array.from({ length: numBlocks }, (_, i) => i);
    for (let i = numBlocks - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const tables = [order.slice(0, maxBlocks), order.slice(maxBlocks)];
    const kc = new Float32Array(numBlocks * B * HKV * D); // (slots, HKV, D)
    tables.forEach((table, s) => {
      for (let j = 0; j < lengths[s]!; j++) {
        const slot = table[Math.floor(j / B)]! * B + (j % B);
        kc.set(randomArray(HKV * D, r, 0.5 + j / 200), slot * HKV * D);
      }
    });
    const vc = randomArray(numBlocks * B * HKV * D, r);
    const rows = [
      ...[0, 63, 64, 65, 127, 128, 300, 511, 512, 699].map((pos) => ({ seq: 0, pos })),
      ...[5, 191, 192, 332].map((pos) => ({ seq: 1, pos })),
    ];
    const T = rows.length;
    const qkv = randomArray(T * W, r);
    const table = new Uint32Array(2 * maxBlocks);
    tables.forEach((row, s) => table.set(row, s * maxBlocks));
    const out = gpu.storage("out", T * HQ * D * 4);
    const step = stepUniform(gpu, T);
    const d = k.attention(gpu, step, {
      qkv: gpu.upload("qkv", qkv),
      positions: gpu.upload("p", Uint32Array.from(rows, (t) => t.pos)),
      seqOf: gpu.upload("s", Uint32Array.from(rows, (t) => t.seq)),
      blockTable: gpu.upload("bt", table),
      kCache: gpu.upload("k", kc),
      vCache: gpu.upload("v", vc),
      out,
    }, { heads: HQ, kvHeads: HKV, headDim: D, blockSize: B, maxBlocks });
    await run(gpu, [d].flat(), T); // one dispatch, or a list of them
    const got = await readF32(gpu, out, T * HQ * D);
    rows.forEach(({ seq, pos }, t) => {
      const want = attentionRef(qkv.subarray(t * W, t * W + HQ * D), pos, tables[seq]!, kc, vc, {
        HQ,
        HKV,
        D,
        B,
      });
      assertClose(got.subarray(t * HQ * D, (t + 1) * HQ * D), want, {
        rtol: 1e-4,
        atol: 1e-5,
        what: `sequence ${seq} position ${pos}`,
      });
    });
  },
);
