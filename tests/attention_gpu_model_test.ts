/**
 * The model end to end under the gpu kernel class (flash-decoding, tiled
 * prefill) against the float64 reference: prompts of several hundred tokens
 * (several flash-decoding pieces), positions past 4,096, decode rows and
 * prefill chunks in one step, with f32 and f16 KV caches; the f16 cache's
 * logprob error stays within its bound; greedy answers do not change with
 * --max-num-seqs.
 */
import { assert, assertEquals } from "./_assert.ts";
import { gpuTest, relError, rng } from "./_gpu.ts";
import { logSoftmax, type RefCache, ReferenceModel } from "./reference.ts";
import { loadModelConfig } from "../engine/loader/config.ts";
import { Checkpoint } from "../engine/loader/checkpoint.ts";
import { ModelRunner, type RunnerOptions, type StepSeq } from "../engine/model_runner.ts";
import type { Gpu } from "../engine/gpu/device.ts";
import { Engine } from "../engine/engine.ts";
import { DEFAULT_SAMPLING } from "../engine/types.ts";

const MODEL = "models/ernie-tiny";

/**
 * Bound on the f16 KV cache's logit error against the exact float64 reference,
 * as a fraction of the largest |logit|. f16 keeps 11 significant bits: each
 * cached k and v is off by up to 2⁻¹¹ of itself, which moves scores and
 * attention outputs by about that fraction, and the two layers carry it into
 * the logits. The fixture measures 1.75e-3 ≈ 3.6 · 2⁻¹¹ (logprob error 0.076
 * over every token, 0.047 over the top 20, against 2.9e-4 with f32 KV); 8 · 2⁻¹¹
 * leaves room for other adapters' rounding. Since a logprob moves by at most
 * twice the largest logit change, this also bounds the logprob error. That the
 * error is the cache's rounding and nothing else is checked separately: the
 * GPU matches, within 1e-3, a reference whose cache is rounded to f16.
 */
const F16_LOGIT_BOUND = 8 * 2 ** -11;

/**
 * max |logSoftmax(a) − logSoftmax(b)| over the finite entries of b (`all`), and over the
 * 20 most likely tokens of b (`top`, what a request's top_logprobs shows).
 */
function logprobError(a: ArrayLike<number>, b: Float64Array): { all: number; top: number } {
  const la = logSoftmax(Float64Array.from(a));
  const lb = logSoftmax(b);
  let all = 0;
  for (let i = 0; i < lb.length; i++) {
    if (Number.isFinite(lb[i]!)) all = Math.max(all, Math.abs(la[i]! - lb[i]!));
  }
  const top = [...lb.keys()].sort((i, j) => lb[j]! - lb[i]!).slice(0, 20)
    .reduce((m, i) => Math.max(m, Math.abs(la[i]! - lb[i]!)), 0);
  return { all, top };
}

async function gpuRunner(
  gpu: Gpu,
  kvCacheDtype: "f16" | "f32",
  o: Omit<RunnerOptions, "validVocab">,
): Promise<ModelRunner> {
  const config = await loadModelConfig(MODEL);
  const ckpt = await Checkpoint.open(MODEL, config);
  const names = new Set(ckpt.names());
  try {
    return await ModelRunner.create(
      gpu,
      config,
      {
        get: (n) => (names.has(n) ? ckpt.get(n) : Promise.resolve(null)),
      },
      { ...o, validVocab: config.vocabSize },
      { kernels: "gpu", kvCacheDtype },
    );
  } finally {
    ckpt.close();
  }
}

/** The blocks 0..n−1 in a seeded random order. */
function shuffled(n: number, random: () => number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

/** Worst errors of one runner over the positions a case checks. */
interface Errors {
  logits: number;
  logprobs: number;
  topLogprobs: number;
}

/**
 * The reference's logits of `ids` at positions start.. on `cache`. With `f16`, one token at a
 * time, each position's k and v rounded to f16 once computed, as an f16 cache holds them (a
 * token still sees its own k and v unrounded: one key of many).
 */
function refStep(
  ref: ReferenceModel,
  cache: RefCache,
  ids: readonly number[],
  start: number,
  f16: boolean,
): Float64Array[] {
  if (!f16) return ref.step(cache, ids, start);
  return ids.map((id, i) => {
    const logits = ref.step(cache, [id], start + i)[0]!;
    for (const layer of [...cache.k, ...cache.v]) {
      layer[start + i] = layer[start + i]!.map(Math.f16round);
    }
    return logits;
  });
}

/**
 * Prefills a long prompt in chunks of `chunk` while a short sequence prefills and then decodes
 * beside it (decode rows and prefill tiles in one step), then decodes both; checks the logits of
 * each chunk's last position and of every decode against the reference: within 1e-3 of the
 * largest logit against the float64 reference (f32 KV) or against the reference with its cache
 * rounded to f16 (f16 KV); errors against the exact reference are returned.
 */
async function longPromptCase(
  gpu: Gpu,
  ref: ReferenceModel,
  kv: "f16" | "f32",
  o: { length: number; chunk: number; decodes: number; seed: number },
): Promise<Errors> {
  const B = 16;
  const blocksLong = Math.ceil((o.length + o.decodes) / B);
  const numBlocks = blocksLong + 8;
  const runner = await gpuRunner(gpu, kv, {
    maxNumBatchedTokens: o.chunk + 20,
    maxNumSeqs: 2,
    numBlocks,
    blockSize: B,
    maxBlocksPerSeq: blocksLong,
  });
  const errors = { logits: 0, logprobs: 0, topLogprobs: 0 };
  try {
    const V = ref.config.vocab;
    const r = rng(o.seed);
    const ids = (n: number) => Array.from({ length: n }, () => 3 + Math.floor(r() * 2000));
    const prompts = [ids(o.length), ids(20)];
    const blocks = shuffled(numBlocks, r);
    const tables = [blocks.slice(0, blocksLong), blocks.slice(blocksLong)];
    // Exact reference caches, then (f16 KV) caches rounded as the GPU's are.
    const exact = [ref.newCache(), ref.newCache()];
    const rounded = kv === "f16" ? [ref.newCache(), ref.newCache()] : undefined;
    /** Exact and (f16) rounded logits of `tokens` of sequence s at start.. */
    const reference = (s: number, tokens: number[], start: number) => {
      const e = ref.step(exact[s]!, tokens, start);
      return { exact: e, like: rounded ? refStep(ref, rounded[s]!, tokens, start, true) : e };
    };
    const wanted = prompts.map((p, s) => reference(s, p, 0));
    const lengths = [0, 0];
    const check = (
      got: Float32Array,
      row: number,
      want: { exact: Float64Array; like: Float64Array },
      what: string,
    ) => {
      const logits = got.subarray(row * V, (row + 1) * V);
      errors.logits = Math.max(errors.logits, relError(logits, want.exact));
      const lp = logprobError(logits, want.exact);
      errors.logprobs = Math.max(errors.logprobs, lp.all);
      errors.topLogprobs = Math.max(errors.topLogprobs, lp.top);
      const err = relError(logits, want.like);
      assert(err < 1e-3, `${kv} KV: ${what}: relative logit error ${err}`);
    };
    const at = (w: { exact: Float64Array[]; like: Float64Array[] }, i: number) => ({
      exact: w.exact[i]!,
      like: w.like[i]!,
    });
    // Chunks of the long prompt; the short one prefills in the first step, then decodes in
    // every later step (its next ids are the reference's own continuation of its cache).
    while (lengths[0]! < o.length) {
      const n = Math.min(o.chunk, o.length - lengths[0]!);
      const seqs: StepSeq[] = [{
        tokens: prompts[0]!.slice(lengths[0]!, lengths[0]! + n),
        start: lengths[0]!,
        blockTable: tables[0]!,
        output: "sample",
      }];
      let shortWant: { exact: Float64Array; like: Float64Array } | undefined;
      if (lengths[1] === 0) {
        seqs.push({ tokens: prompts[1]!, start: 0, blockTable: tables[1]!, output: "sample" });
        shortWant = at(wanted[1]!, prompts[1]!.length - 1);
        lengths[1] = prompts[1]!.length;
      } else if (lengths[1]! < tables[1]!.length * B) {
        const id = 3 + Math.floor(r() * 2000);
        shortWant = at(reference(1, [id], lengths[1]!), 0);
        seqs.push({ tokens: [id], start: lengths[1]!, blockTable: tables[1]!, output: "sample" });
        lengths[1]!++;
      }
      const res = await runner.step(seqs, true);
      lengths[0]! += n;
      check(res.logits!, 0, at(wanted[0]!, lengths[0]! - 1), `long prompt at ${lengths[0]! - 1}`);
      if (shortWant) check(res.logits!, 1, shortWant, `short sequence at ${lengths[1]! - 1}`);
    }
    for (let d = 0; d < o.decodes; d++) {
      const id = 3 + Math.floor(r() * 2000);
      const want = at(reference(0, [id], lengths[0]!), 0);
      const res = await runner.step([{
        tokens: [id],
        start: lengths[0]!,
        blockTable: tables[0]!,
        output: "sample",
      }], true);
      check(res.logits!, 0, want, `decode at ${lengths[0]}`);
      lengths[0]!++;
    }
  } finally {
    runner.destroy();
  }
  return errors;
}

for (const kv of ["f32", "f16"] as const) {
  gpuTest(
    `gpu class, ${kv} KV: a 700-token prompt in chunks of 256 beside a decoding sequence, ` +
      `then decodes, match the float64 reference`,
    async (gpu) => {
      const ref = await ReferenceModel.load(MODEL);
      const e = await longPromptCase(gpu, ref, kv, {
        length: 700,
        chunk: 256,
        decodes: 3,
        seed: 700,
      });
      console.log(
        `${kv} KV, 700 tokens: logit rel error ${e.logits}, logprob error ${e.logprobs} (top 20: ${e.topLogprobs})`,
      );
      if (kv === "f16") {
        assert(e.logits < F16_LOGIT_BOUND, `f16 KV: logit error ${e.logits} of the largest logit`);
      }
    },
  );
}

gpuTest(
  "gpu class: positions past 4,096 (a 4,200-token prompt in chunks of 512 beside a decoding " +
    "sequence, then decodes) match the float64 reference",
  async (gpu) => {
    const ref = await ReferenceModel.load(MODEL);
    const e = await longPromptCase(gpu, ref, "f32", {
      length: 4200,
      chunk: 512,
      decodes: 2,
      seed: 4200,
    });
    console.log(`f32 KV, 4200 tokens: logit rel error ${e.logits}, logprob error ${e.logprobs}`);
  },
);

gpuTest(
  "the gpu class picks f16 KV under auto only where the device has shader-f16",
  async (gpu) => {
    const config = await loadModelConfig(MODEL);
    const ckpt = await Checkpoint.open(MODEL, config);
    const names = new Set(ckpt.names());
    const o = {
      maxNumBatchedTokens: 16,
      maxNumSeqs: 2,
      numBlocks: 8,
      blockSize: 16,
      maxBlocksPerSeq: 4,
      validVocab: config.vocabSize,
    };
    try {
      const source = { get: (n: string) => (names.has(n) ? ckpt.get(n) : Promise.resolve(null)) };
      const gpuAuto = await ModelRunner.create(gpu, config, source, o, { kernels: "gpu" });
      const cpuAuto = await ModelRunner.create(gpu, config, source, o, { kernels: "cpu" });
      assertEquals(gpuAuto.kvCacheDtype, gpu.hasF16 ? "f16" : "f32");
      assertEquals(cpuAuto.kvCacheDtype, "f32");
      // f16 halves the pool: K and V of every layer, 2 bytes per value.
      const values = 2 * config.numLayers * o.numBlocks * o.blockSize * config.numKvHeads *
        config.headDim;
      assertEquals(cpuAuto.kvBytes, values * 4);
      if (gpu.hasF16) assertEquals(gpuAuto.kvBytes, values * 2);
      gpuAuto.destroy();
      cpuAuto.destroy();
    } finally {
      ckpt.close();
    }
  },
);

for (const kv of ["f32", "f16"] as const) {
  gpuTest(
    `gpu class, ${kv} KV: greedy answers are equal at max-num-seqs 1 and 64` +
      (kv === "f32" ? " and match the float64 reference" : ""),
    async (gpu) => {
      const r = rng(64);
      // Prompts of several hundred tokens (several pieces) beside short ones: at 64 sequences
      // their chunks share steps with the others' decodes; at 1 each runs alone.
      const prompts = [650, 3, 300, 40, 513].map((n) =>
        Array.from({ length: n }, () => 3 + Math.floor(r() * 2000))
      );
      const answers: number[][][] = [];
      let validVocab = 0;
      for (const maxNumSeqs of [1, 64]) {
        const engine = await Engine.load(MODEL, {
          gpu,
          kernels: "gpu",
          kvCacheDtype: kv,
          maxNumSeqs,
          maxNumBatchedTokens: 256,
          kvCacheMemory: 16 << 20,
        });
        const results = await Promise.all(prompts.map((p, i) =>
          engine.generate({
            id: `g${i}`,
            promptIds: p,
            sampling: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 10, ignoreEos: true },
          })
        ));
        answers.push(results.map((x) => [...x.tokenIds]));
        validVocab = engine.validVocab;
        await engine.close();
      }
      assertEquals(answers[1], answers[0]);
      if (kv === "f32") {
        // The engine never picks the padding ids past the tokenizer's vocabulary; nor does this.
        const ref = await ReferenceModel.load(MODEL, { vocabLimit: validVocab });
        prompts.forEach((p, i) => assertEquals(answers[0]![i], ref.greedy(p, 10), `prompt ${i}`));
      }
    },
  );
}
