/**
 * The f16 KV cache: rotary_kv.wgsl writes k and v as packed f16 pairs (rounded
 * to nearest), and the cpu-class attention kernel reads them, both against a
 * CPU reference on seeded random inputs; `auto` resolves by class and device.
 */
import { assertEquals, assertRejects } from "./_assert.ts";
import { Engine } from "../engine/engine.ts";
import type { Gpu } from "../engine/gpu/device.ts";
import * as k from "../engine/gpu/kernels.ts";
import { chooseKvCacheDtype } from "../engine/gpu/registry.ts";
import { assertClose, gpuTest, randomArray, rng } from "./_gpu.ts";

async function run(gpu: Gpu, ds: readonly k.Dispatch[], T: number): Promise<void> {
  await gpu.checked("kernel test", () => {
    const encoder = gpu.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    k.encode(pass, ds, { numTokens: T, numRows: 0, numLogitRows: 0 });
    pass.end();
    gpu.device.queue.submit([encoder.finish()]);
  });
}

function stepUniform(gpu: Gpu, T: number): GPUBuffer {
  const b = gpu.uniform("step", k.STEP_UNIFORM_BYTES);
  gpu.write(b, new Uint32Array([T, 0, 0, 0]));
  return b;
}

/** f16 values packed two per word, as the cache holds them. */
function packF16(x: Float32Array): Uint32Array {
  return new Uint32Array(new Float16Array(x).buffer);
}

function unpackF16(words: ArrayBuffer): Float32Array {
  return Float32Array.from(new Float16Array(words));
}

gpuTest("rotary_kv appends k and v as f16 pairs rounded to nearest", async (gpu) => {
  const [T, HQ, HKV, D, theta] = [5, 4, 2, 24, 500000];
  const W = (HQ + 2 * HKV) * D;
  const r = rng(23);
  const qkv = randomArray(T * W, r, 3);
  const positions = Uint32Array.from([0, 3, 100, 4097, 9]);
  const slots = Uint32Array.from([6, 0, 2, 7, 3]);
  const numSlots = 8;
  const buf = gpu.upload("qkv", qkv);
  const kCache = gpu.storage("k", numSlots * HKV * D * 2);
  const vCache = gpu.storage("v", numSlots * HKV * D * 2);
  const invFreq = Float32Array.from({ length: D / 2 }, (_, i) => 1 / Math.pow(theta, (2 * i) / D));
  const d = k.rotaryKv(gpu, stepUniform(gpu, T), {
    qkv: buf,
    positions: gpu.upload("p", positions),
    slots: gpu.upload("s", slots),
    invFreq: gpu.upload("f", invFreq),
    kCache,
    vCache,
  }, { heads: HQ, kvHeads: HKV, headDim: D, posScale: 1, kvF16: true });
  await run(gpu, [d], T);
  const rotated = new Float32Array(await gpu.read(buf, T * W * 4));
  const kGot = unpackF16(await gpu.read(kCache, numSlots * HKV * D * 2));
  const vGot = unpackF16(await gpu.read(vCache, numSlots * HKV * D * 2));
  for (let t = 0; t < T; t++) {
    const at = slots[t]! * HKV * D;
    // The cache holds the f32 results (the rotated k in qkv, v as given) rounded to f16.
    const kWant = rotated.subarray(t * W + HQ * D, t * W + (HQ + HKV) * D).map(Math.f16round);
    const vWant = qkv.subarray(t * W + (HQ + HKV) * D, (t + 1) * W).map(Math.f16round);
    assertClose(kGot.subarray(at, at + HKV * D), kWant, { rtol: 0, atol: 0, what: `k ${t}` });
    assertClose(vGot.subarray(at, at + HKV * D), vWant, { rtol: 0, atol: 0, what: `v ${t}` });
  }
});

gpuTest("cpu-class attention reads an f16 KV cache", async (gpu) => {
  const [HQ, HKV, D, B] = [6, 2, 20, 5];
  const W = (HQ + 2 * HKV) * D;
  const r = rng(29);
  const numBlocks = 30;
  const kv = [0, 1].map(() => randomArray(numBlocks * B * HKV * D, r).map(Math.f16round));
  const table = Uint32Array.from({ length: numBlocks }, (_, i) => (i * 7) % numBlocks);
  const tokens = [{ pos: 0 }, { pos: 64 }, { pos: 65 }, { pos: 149 }];
  const T = tokens.length;
  const qkv = randomArray(T * W, r);
  const out = gpu.storage("out", T * HQ * D * 4);
  const ds = k.attention(gpu, stepUniform(gpu, T), {
    qkv: gpu.upload("qkv", qkv),
    positions: gpu.upload("p", Uint32Array.from(tokens, (t) => t.pos)),
    seqOf: gpu.upload("s", new Uint32Array(T)),
    blockTable: gpu.upload("bt", table),
    kCache: gpu.upload("k", packF16(kv[0]!)),
    vCache: gpu.upload("v", packF16(kv[1]!)),
    out,
  }, { heads: HQ, kvHeads: HKV, headDim: D, blockSize: B, maxBlocks: numBlocks, kvF16: true });
  await run(gpu, ds, T);
  const got = new Float32Array(await gpu.read(out, T * HQ * D * 4));
  const want = new Float64Array(T * HQ * D);
  tokens.forEach(({ pos }, t) => {
    for (let h = 0; h < HQ; h++) {
      const base = (j: number) =>
        ((table[Math.floor(j / B)]! * B + (j % B)) * HKV + Math.floor(h / (HQ / HKV))) * D;
      const s = Array.from({ length: pos + 1 }, (_, j) => {
        let dot = 0;
        for (let e = 0; e < D; e++) dot += qkv[t * W + h * D + e]! * kv[0]![base(j) + e]!;
        return dot / Math.sqrt(D);
      });
      const m = Math.max(...s);
      const p = s.map((x) => Math.exp(x - m));
      const z = p.reduce((a, b) => a + b, 0);
      for (let e = 0; e < D; e++) {
        let acc = 0;
        for (let j = 0; j <= pos; j++) acc += p[j]! * kv[1]![base(j) + e]!;
        want[(t * HQ + h) * D + e] = acc / z;
      }
    }
  });
  assertClose(got, want, { rtol: 1e-4, atol: 1e-5, what: "attention" });
});

Deno.test("auto KV dtype is f16 only for the gpu class on a device with shader-f16", () => {
  assertEquals(chooseKvCacheDtype("auto", "gpu", true), "f16");
  assertEquals(chooseKvCacheDtype("auto", "gpu", false), "f32");
  assertEquals(chooseKvCacheDtype("auto", "cpu", true), "f32");
  assertEquals(chooseKvCacheDtype("f16", "cpu", false), "f16");
  assertEquals(chooseKvCacheDtype("f32", "gpu", true), "f32");
});

gpuTest(
  "an f16 KV cache holds twice the tokens of f32 in the same --kv-cache-memory",
  async (gpu) => {
    const blocks: number[] = [];
    for (const kvCacheDtype of ["f32", "f16"] as const) {
      // 1 MiB holds 1,024 f32 tokens of the fixture (2 layers × K, V × 2 heads × 32 × 4 bytes).
      const engine = await Engine.load("models/ernie-tiny", {
        gpu,
        kernels: "gpu",
        kvCacheDtype,
        kvCacheMemory: 1 << 20,
        maxModelLen: 512,
        maxNumSeqs: 8,
      });
      blocks.push(engine.runner.options.numBlocks);
      assertEquals(
        engine.runner.kvBytes,
        blocks.at(-1)! * 16 * 2 * 2 * 2 * 32 * (kvCacheDtype === "f16" ? 2 : 4),
      );
      await engine.close();
    }
    assertEquals(blocks, [64, 128]);
  },
);

Deno.test("--kv-cache-dtype f16 on the wasm backend is refused with what to do", async () => {
  await assertRejects(
    () => Engine.load("models/ernie-tiny", { backend: "wasm", kvCacheDtype: "f16" }),
    /--kv-cache-dtype f16 needs the webgpu backend/,
  );
});
