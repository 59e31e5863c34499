/**
 * Device sampling against the CPU sampler (engine/sampler.ts), on both kernels
 * that implement it: the GPU's (shaders/sample.wgsl) and the wasm backend's
 * (kernels.c `sample`, the same algorithm on worker threads): greedy ids equal
 * with every logit edit, random draws from the same distribution (many seeded
 * draws), grammar masks, and a row's draw independent of the batch.
 */
import { assert, assertEquals } from "./_assert.ts";
import { gpuTest, randomArray, rng } from "./_gpu.ts";
import type { Gpu } from "../engine/gpu/device.ts";
import { encode, STEP_UNIFORM_BYTES } from "../engine/gpu/kernels.ts";
import {
  EDIT_BYTES,
  maskWords,
  packMasks,
  packRows,
  ROW_BYTES,
  type RowSampling,
  rowSampling,
  sampleOp,
} from "../engine/gpu/sampling.ts";
import { sample } from "../engine/sampler.ts";
import { uniform } from "../engine/rng.ts";
import { DEFAULT_SAMPLING, type SamplingParams } from "../engine/types.ts";
import { wasmSampleRows } from "../engine/backends/wasm/sample.ts";

/** Runs the kernel over `rows` (one logits row each) and returns the chosen ids. */
async function gpuSample(
  gpu: Gpu,
  logits: Float32Array,
  stride: number,
  valid: number,
  rows: readonly (RowSampling | null)[],
): Promise<Uint32Array> {
  const R = rows.length;
  const edits = rows.reduce((n, r) => n + (r?.edits.length ?? 0), 0);
  const rowData = new ArrayBuffer(R * ROW_BYTES);
  const editData = new ArrayBuffer(Math.max(1, edits) * EDIT_BYTES);
  assertEquals(packRows(rows, rowData, editData, Math.max(1, edits)), edits);
  const step = gpu.uniform("step", STEP_UNIFORM_BYTES);
  gpu.write(step, new Uint32Array([R, R, R, 0]));
  const b = {
    logits: gpu.upload("logits", logits),
    rows: gpu.upload("rows", new Uint8Array(rowData)),
    edits: gpu.upload("edits", new Uint8Array(editData)),
    ids: gpu.upload("ids", new Uint32Array(R).fill(12345)),
    masks: gpu.upload("masks", masksOf(rows, stride)),
  };
  const d = sampleOp(gpu, step, b, { valid, stride });
  await gpu.checked("sample", async () => {
    const enc = gpu.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    encode(pass, [d], { numTokens: R, numRows: R, numLogitRows: R });
    pass.end();
    gpu.device.queue.submit([enc.finish()]);
    await gpu.device.queue.onSubmittedWorkDone();
  });
  const out = new Uint32Array(await gpu.read(b.ids, R * 4));
  for (const x of [step, ...Object.values(b)]) x.destroy();
  return out;
}

const params = (p: Partial<SamplingParams>): SamplingParams => ({ ...DEFAULT_SAMPLING, ...p });

/** Draws ids for `rows` of `logits` (rows of `stride`), as one of the device kernels does. */
type Draw = (
  logits: Float32Array,
  stride: number,
  valid: number,
  rows: readonly (RowSampling | null)[],
) => Promise<Uint32Array>;

/** Registers a test for the GPU kernel (when there is an adapter) and for the wasm kernel. */
function bothTest(name: string, fn: (draw: Draw, kernel: string) => Promise<void>): void {
  gpuTest(`GPU: ${name}`, (gpu) => fn((l, s, v, r) => gpuSample(gpu, l, s, v, r), "GPU"));
  Deno.test(
    `wasm: ${name}`,
    () => fn((l, s, v, r) => wasmSampleRows(l, s, v, r, { initial: 12345 }), "wasm"),
  );
}

/** The rows' grammar masks as the runner uploads them (at least one word). */
function masksOf(rows: readonly (RowSampling | null)[], stride: number): Uint32Array {
  const words = maskWords(stride);
  const out = new Uint32Array(Math.max(1, rows.length * words));
  packMasks(rows, out, words);
  return out;
}

/** A bitset over `stride` ids with the given ids set. */
function bitset(stride: number, ids: Iterable<number>): Uint32Array {
  const mask = new Uint32Array(maskWords(stride));
  for (const id of ids) mask[id >>> 5]! |= 1 << (id & 31);
  return mask;
}

bothTest(
  "a grammar mask limits greedy and random picks to its ids, as on the CPU",
  async (draw) => {
    const V = 777;
    const random = rng(21);
    const logits = randomArray(V, random, 3);
    const allowedIds = [3, 40, 41, 300, 511, 776];
    const mask = bitset(V, allowedIds);
    const rows: RowSampling[] = [];
    const batch = 64;
    const all = new Float32Array(batch * V);
    for (let i = 0; i < batch; i++) {
      all.set(logits, i * V);
      const p = params(i === 0 ? { temperature: 0 } : { temperature: 1.5, topP: 0.95, seed: 7 });
      const row = rowSampling(
        p,
        { promptIds: [], outputIds: [], eosTokenIds: [], validVocab: V },
        uniform({ seed: 7, step: i }),
      );
      rows.push({ ...row, mask });
    }
    const ids = await draw(all, V, V, rows);
    const cpuGreedy = sample(logits, {
      validVocab: V,
      promptIds: [],
      outputIds: [],
      params: params({ temperature: 0 }),
      rngKey: { seed: 7, step: 0 },
      allowed: mask,
    }).tokenId;
    assertEquals(ids[0], cpuGreedy);
    for (const id of ids) assert(allowedIds.includes(id), `id ${id} is outside the mask`);
    assert(new Set(ids).size > 1, "random rows draw more than one allowed id");
  },
);

bothTest(
  "greedy equals the CPU sampler with bias, min_tokens masks and penalties",
  async (draw) => {
    const random = rng(11);
    const V = 1000;
    const valid = 997; // padding ids past the tokenizer are never chosen
    const cases: { p: SamplingParams; prompt: number[]; output: number[] }[] = [];
    for (let r = 0; r < 24; r++) {
      const prompt = Array.from({ length: 30 }, () => Math.floor(random() * V));
      const output = Array.from({ length: r % 7 }, () => Math.floor(random() * V));
      cases.push({
        p: params({
          temperature: 0,
          logitBias: new Map([[Math.floor(random() * V), 8 * random() - 2], [998, 100]]),
          minTokens: r % 3 === 0 ? 10 : 0,
          repetitionPenalty: r % 4 === 1 ? 1.7 : 1,
          presencePenalty: r % 5 === 2 ? 1.5 : 0,
          frequencyPenalty: r % 6 === 3 ? 0.9 : 0,
        }),
        prompt,
        output,
      });
    }
    const logits = new Float32Array(cases.length * V);
    cases.forEach((c, r) => {
      const row = randomArray(V, random, 4);
      // Make the eos id (2) and an output id the row's best, so masks and penalties matter.
      row[2] = 9;
      if (c.output[0] !== undefined) row[c.output[0]] = 8.5;
      if (c.prompt[0] !== undefined) row[c.prompt[0]] = 8.8;
      logits.set(row, r * V);
    });
    const eos = [2];
    const rows = cases.map((c) =>
      rowSampling(c.p, {
        promptIds: c.prompt,
        outputIds: c.output,
        eosTokenIds: eos,
        validVocab: valid,
      }, 0)
    );
    const ids = await draw(logits, V, valid, rows);
    cases.forEach((c, r) => {
      const cpu = sample(logits.subarray(r * V, (r + 1) * V), {
        validVocab: valid,
        promptIds: c.prompt,
        outputIds: c.output,
        params: c.p,
        rngKey: { seed: 1, step: 0 },
        eosTokenIds: eos,
      });
      assertEquals(ids[r], cpu.tokenId, `row ${r}`);
    });
  },
);

/**
 * The ids top-k, top-p and min-p keep, with their weights (in f64, with frequency
 * penalties applied), plus the one id past the top-p cut that f32 rounding may admit.
 */
function kept(logits: Float32Array, p: SamplingParams, output: number[]): Map<number, number> {
  const v = Array.from(logits);
  for (const id of new Set(output)) {
    v[id]! -= p.frequencyPenalty * output.filter((x) => x === id).length + p.presencePenalty;
  }
  const max = Math.max(...v.map((x) => x / p.temperature));
  let ranked = v.map((x, id) => ({ id, w: Math.exp(x / p.temperature - max) }))
    .sort((a, b) => b.w - a.w);
  if (p.topK > 0) ranked = ranked.slice(0, p.topK);
  if (p.topP < 1) {
    const total = ranked.reduce((n, x) => n + x.w, 0);
    let cumulative = 0;
    const cut = ranked.findIndex((x) => (cumulative += x.w) >= p.topP * total);
    ranked = ranked.slice(0, cut + 2);
  }
  return new Map(ranked.filter((x) => x.w >= p.minP * 0.999).map((x) => [x.id, x.w]));
}

/**
 * Total variation distance between `n` draws and the expected distribution, over ten
 * buckets of ids of about equal expected mass (so the sampling noise stays small).
 */
function bucketTvd(counts: Map<number, number>, weights: Map<number, number>, n: number): number {
  const ranked = [...weights].sort((a, b) => b[1] - a[1]);
  const total = ranked.reduce((s, [, w]) => s + w, 0);
  const expected = new Array(10).fill(0);
  const seen = new Array(10).fill(0);
  let cumulative = 0;
  for (const [id, w] of ranked) {
    const bucket = Math.min(9, Math.floor((cumulative / total) * 10));
    cumulative += w;
    expected[bucket] += w / total;
    seen[bucket] += (counts.get(id) ?? 0) / n;
  }
  return expected.reduce((d, e, i) => d + Math.abs(e - seen[i]), 0) / 2;
}

bothTest(
  "draws follow the CPU sampler's distribution (temperature, top-k, top-p, min-p)",
  async (draw, kernel) => {
    const V = 777; // not a multiple of the workgroup size
    const random = rng(5);
    const base = randomArray(V, random, 3);
    const settings: Partial<SamplingParams>[] = [
      { temperature: 1 },
      { temperature: 0.7, topK: 20 },
      { temperature: 1.3, topP: 0.8 },
      { temperature: 0.9, topK: 50, topP: 0.6 },
      { temperature: 1, minP: 0.2 },
      { temperature: 0.8, topP: 0.8, minP: 0.05, frequencyPenalty: 0.5 },
    ];
    const draws = 2048;
    for (const s of settings) {
      const p = params({ ...s, seed: 42 });
      const output = [3, 3, 9];
      const rows: RowSampling[] = [];
      const gpuCounts = new Map<number, number>();
      const cpuCounts = new Map<number, number>();
      const batch = 256;
      for (let start = 0; start < draws; start += batch) {
        const logits = new Float32Array(batch * V);
        rows.length = 0;
        for (let i = 0; i < batch; i++) {
          logits.set(base, i * V);
          const u = uniform({ seed: 42, step: start + i });
          rows.push(
            rowSampling(p, { promptIds: [], outputIds: output, eosTokenIds: [], validVocab: V }, u),
          );
          const cpu = sample(base, {
            validVocab: V,
            promptIds: [],
            outputIds: output,
            params: p,
            rngKey: { seed: 42, step: start + i },
          }).tokenId;
          cpuCounts.set(cpu, (cpuCounts.get(cpu) ?? 0) + 1);
        }
        const ids = await draw(logits, V, V, rows);
        for (const id of ids) {
          assert(id < V, `id ${id} out of range`);
          gpuCounts.set(id, (gpuCounts.get(id) ?? 0) + 1);
        }
      }
      if (s.topK) {
        assert(
          gpuCounts.size <= s.topK,
          `top-k ${s.topK}: ${gpuCounts.size} distinct ids`,
        );
      }
      const allowed = kept(base, p, output);
      for (const id of gpuCounts.keys()) {
        assert(allowed.has(id), `${JSON.stringify(s)}: id ${id} is outside top-k/top-p/min-p`);
      }
      // The one id past the top-p cut carries no expected mass.
      const weights = new Map([...allowed].slice(0, s.topP ? -1 : undefined));
      const dGpu = bucketTvd(gpuCounts, weights, draws);
      const dCpu = bucketTvd(cpuCounts, weights, draws);
      assert(dCpu < 0.06, `${JSON.stringify(s)}: CPU draws are ${dCpu.toFixed(3)} from expected`);
      assert(
        dGpu < 0.06,
        `${JSON.stringify(s)}: ${kernel} draws are ${dGpu.toFixed(3)} from expected`,
      );
    }
  },
);

bothTest("a draw does not depend on the other rows of the batch", async (draw) => {
  const V = 4099;
  const random = rng(8);
  const target = randomArray(V, random, 2);
  const p = params({ temperature: 0.9, topP: 0.9, topK: 100, seed: 3 });
  const row = rowSampling(
    p,
    { promptIds: [], outputIds: [], eosTokenIds: [], validVocab: V },
    0.61803,
  );
  const alone = await draw(target, V, V, [row]);
  const others = 9;
  const logits = new Float32Array((others + 1) * V);
  const rows: (RowSampling | null)[] = [];
  for (let i = 0; i <= others; i++) {
    if (i === 4) {
      logits.set(target, i * V);
      rows.push(row);
    } else {
      logits.set(randomArray(V, random, 5), i * V);
      rows.push(
        i % 3 === 0 ? null : rowSampling(params({ temperature: 1 }), {
          promptIds: [],
          outputIds: [],
          eosTokenIds: [],
          validVocab: V,
        }, random()),
      );
    }
  }
  const batched = await draw(logits, V, V, rows);
  assertEquals(batched[4], alone[0]);
  assertEquals(batched[0], 12345, "a CPU row (mode 0) is left alone");
});

bothTest("a row with no finite logit gets the invalid id 0xffffffff", async (draw) => {
  const V = 300;
  const logits = new Float32Array(2 * V).fill(NaN);
  logits.fill(-Infinity, V);
  const greedy = rowSampling(params({ temperature: 0 }), {
    promptIds: [],
    outputIds: [],
    eosTokenIds: [],
    validVocab: V,
  }, 0);
  const random = rowSampling(params({ temperature: 1 }), {
    promptIds: [],
    outputIds: [],
    eosTokenIds: [],
    validVocab: V,
  }, 0.5);
  const ids = await draw(logits, V, V, [greedy, random]);
  assertEquals([...ids], [0xffffffff, 0xffffffff]);
});
