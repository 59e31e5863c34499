/**
 * The engine end to end on the shipped tiny model: continuous batching,
 * preemption, prefix caching and seeded sampling must not change any
 * request's output.
 */
import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { gpuTest, rng } from "./_gpu.ts";
import { Engine, type EngineOptions } from "../engine/engine.ts";
import {
  DEFAULT_SAMPLING,
  type GenerateRequest,
  RequestError,
  type SamplingParams,
} from "../engine/types.ts";
import type { Gpu } from "../engine/gpu/device.ts";
import { join } from "node:path";
import { SafetensorsCheckpoint, writeSafetensors } from "../engine/loader/safetensors.ts";
import { makeModelDir } from "../tools/make_fixture.ts";
import type { ModelRunner } from "../engine/model_runner.ts";

const MODEL = "models/ernie-tiny";
const KIB = 1024;

function requests(n: number, sampling: Partial<SamplingParams>, seed = 1): GenerateRequest[] {
  const r = rng(seed);
  const system = Array.from({ length: 40 }, () => 300 + Math.floor(r() * 1500));
  return Array.from({ length: n }, (_, i) => ({
    id: `r${i}`,
    promptIds: [
      ...(i % 2 === 0 ? system : []),
      ...Array.from({ length: 3 + Math.floor(r() * 30) }, () => 300 + Math.floor(r() * 1500)),
    ],
    sampling: { ...DEFAULT_SAMPLING, maxTokens: 6 + (i % 5) * 4, ignoreEos: true, ...sampling },
  }));
}

async function runAll(gpu: Gpu, reqs: GenerateRequest[], options: EngineOptions) {
  const engine = await Engine.load(MODEL, { gpu, ...options });
  const results = await Promise.all(reqs.map((r) => engine.generate(r)));
  const stats = { ...engine.stats };
  await engine.close();
  return { ids: results.map((r) => [...r.tokenIds]), results, stats };
}

gpuTest(
  "greedy outputs are identical at max-num-seqs 1 and 64, under preemption, with and without prefix caching",
  async (gpu) => {
    const reqs = requests(20, { temperature: 0 });
    const base = await runAll(gpu, reqs, { maxNumSeqs: 64, kvCacheMemory: 4096 * KIB });
    assert(base.stats.seqsInSteps / base.stats.steps > 2, "several requests share a step");
    const one = await runAll(gpu, reqs, { maxNumSeqs: 1, kvCacheMemory: 4096 * KIB });
    assertEquals(one.ids, base.ids);
    // 12 blocks of 16 tokens: far fewer than the running sequences need, so some are preempted.
    const tight = await runAll(gpu, reqs, {
      maxNumSeqs: 64,
      blockSize: 16,
      kvCacheMemory: 12 * 16 * KIB,
    });
    assert(tight.stats.preemptions > 0, "the tight KV pool forces preemption");
    assertEquals(tight.ids, base.ids);
    const chunked = await runAll(gpu, reqs, {
      maxNumSeqs: 64,
      maxNumBatchedTokens: 16,
      enablePrefixCaching: false,
    });
    assertEquals(chunked.ids, base.ids);
  },
);

gpuTest("a shared system prompt is served from the prefix cache the second time", async (gpu) => {
  const engine = await Engine.load(MODEL, { gpu, blockSize: 8 });
  const system = Array.from({ length: 50 }, (_, i) => 500 + i);
  const sampling = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 4, ignoreEos: true };
  const first = await engine.generate({ id: "a", promptIds: [...system, 7, 8, 9], sampling });
  const second = await engine.generate({ id: "b", promptIds: [...system, 10, 11], sampling });
  assertEquals(first.cachedTokens, 0);
  assertEquals(second.cachedTokens, 48); // six full blocks of 8
  const again = await engine.generate({ id: "c", promptIds: [...system, 7, 8, 9], sampling });
  assertEquals(again.tokenIds, first.tokenIds);
  await engine.close();
});

gpuTest("a seeded request samples the same text alone and among many others", async (gpu) => {
  const sampling = { temperature: 0.9, topP: 0.95, seed: 1234 };
  const [target] = requests(1, sampling, 9);
  const alone = await runAll(gpu, [target!], {});
  const crowd = requests(24, { temperature: 1 }, 3).map((r, i) => ({ ...r, id: `c${i}` }));
  const among = await runAll(gpu, [...crowd.slice(0, 12), target!, ...crowd.slice(12)], {
    maxNumSeqs: 32,
  });
  assertEquals(among.ids[12], alone.ids[0]);
  const twins = await runAll(gpu, [target!, { ...target!, id: "twin" }], {});
  assertEquals(twins.ids[0], twins.ids[1], "same seed, same output");
});

gpuTest("requests that cannot fit the context get a 400, and the others still run", async (gpu) => {
  const engine = await Engine.load(MODEL, { gpu, maxModelLen: 64 });
  const sampling = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 4 };
  const tooLong = engine.generate({ id: "long", promptIds: Array(65).fill(300), sampling });
  await assertRejects(() => tooLong, /context length/);
  await tooLong.catch((e) => assert(e instanceof RequestError && e.status === 400));
  const ok = await engine.generate({ id: "ok", promptIds: [300, 301], sampling });
  assertEquals(ok.tokenIds.length, 4);
  const capped = await engine.generate({
    id: "cap",
    promptIds: Array(60).fill(300),
    sampling: { ...sampling, maxTokens: 50, ignoreEos: true },
  });
  assertEquals(capped.finishReason, "length");
  assert(60 + capped.tokenIds.length <= 64);
  await engine.close();
});

gpuTest("embeddings are L2-normalised final hidden states of the last token", async (gpu) => {
  const engine = await Engine.load(MODEL, { gpu });
  const a = await engine.embed({ id: "e1", promptIds: [300, 301, 302] });
  const b = await engine.embed({ id: "e2", promptIds: [300, 301, 302] });
  assertEquals(a.embedding.length, engine.hiddenSize);
  assertEquals([...a.embedding], [...b.embedding]);
  const norm = Math.hypot(...a.embedding);
  assert(Math.abs(norm - 1) < 1e-5, `norm ${norm}`);
  await engine.close();
});

gpuTest(
  "an answer ending on eos counts it in tokenIds and in logprobs alike (vLLM)",
  async (gpu) => {
    const engine = await Engine.load(MODEL, { gpu });
    const eos = engine.tokenizer.eosTokenIds[0]!;
    const sampling = {
      ...DEFAULT_SAMPLING,
      temperature: 0,
      maxTokens: 10,
      minTokens: 2,
      logitBias: new Map([[eos, 100]]),
      logprobs: true,
    };
    const r = await engine.generate({ id: "eos", promptIds: [300, 301, 302], sampling });
    assertEquals(r.finishReason, "stop");
    assertEquals(r.tokenIds.length, 3, "two tokens held by min_tokens, then eos");
    assertEquals(r.tokenIds[2], eos);
    assertEquals(r.logprobs!.map((l) => l.tokenId), [...r.tokenIds]);
    assertEquals(r.text, engine.tokenizer.decode(r.tokenIds.slice(0, 2)), "eos is not in the text");
    await engine.close();
  },
);

gpuTest("no stop string ends a request before min_tokens (vLLM)", async (gpu) => {
  const engine = await Engine.load(MODEL, { gpu });
  const base = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 16, ignoreEos: true };
  const promptIds = [300, 301, 302, 303];
  const full = await engine.generate({ id: "full", promptIds, sampling: base });
  // A character of the first token's text: without min_tokens it stops at once.
  const stop = [...engine.tokenizer.decode(full.tokenIds.slice(0, 1))].find((c) => c.trim())!;
  assert(stop !== undefined, `first token ${full.tokenIds[0]} has visible text`);
  const sampling = { ...base, stop: [stop] };
  const early = await engine.generate({ id: "early", promptIds, sampling });
  assertEquals(early.tokenIds.length, 1);
  const held = await engine.generate({
    id: "held",
    promptIds,
    sampling: { ...sampling, minTokens: 8 },
  });
  assert(held.tokenIds.length > 8, `stopped after ${held.tokenIds.length} tokens, min_tokens 8`);
  assertEquals(held.tokenIds, full.tokenIds.slice(0, held.tokenIds.length));
  await engine.close();
});

/**
 * A tiny model (untied lm_head) whose embedding row `poisoned` is NaN: every
 * logit of a sequence that contains that id is NaN, the others are untouched.
 */
async function nanModel(poisoned: number): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "nan_model_" });
  await makeModelDir(dir, { tie_word_embeddings: false }, { seed: 31 });
  const st = await SafetensorsCheckpoint.open(dir);
  const tensors = [];
  for (const name of st.names()) {
    const t = await st.read(name);
    if (name === "model.embed_tokens.weight") {
      const bits = new Uint16Array(t.bytes.slice().buffer);
      const hidden = t.shape[1]!;
      bits.fill(0x7fc0, poisoned * hidden, (poisoned + 1) * hidden); // bf16 NaN
      tensors.push({ ...t, name, bytes: new Uint8Array(bits.buffer) });
    } else tensors.push({ ...t, name });
  }
  st.close();
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  return dir;
}

gpuTest(
  "a request whose logits are all NaN gets a 500 naming the step; the others go on",
  async (gpu) => {
    const X = 777;
    const dir = await nanModel(X);
    const engine = await Engine.load(dir, { gpu, blockSize: 4, kvCacheMemory: 1 << 20 });
    const base = { ...DEFAULT_SAMPLING, maxTokens: 6, ignoreEos: true, seed: 3 };
    const greedy = { ...base, temperature: 0 }; // GPU argmax: 0xFFFFFFFF on a NaN row
    const sampled = { ...base, temperature: 1 }; // CPU sampler over the logits
    const healthy = [300, 301, 302, 303, 304];
    const poisoned = [300, 301, X];
    const settled = await Promise.allSettled([
      engine.generate({ id: "ok-greedy", promptIds: healthy, sampling: greedy }),
      engine.generate({ id: "nan-greedy", promptIds: poisoned, sampling: greedy }),
      engine.generate({ id: "nan-sampled", promptIds: [...poisoned, 5], sampling: sampled }),
      engine.generate({ id: "ok-sampled", promptIds: healthy, sampling: sampled }),
    ]);
    for (const i of [1, 2]) {
      const r = settled[i]!;
      assert(r.status === "rejected", `request ${i} should fail`);
      const e = r.reason;
      assert(e instanceof RequestError, String(e));
      assertEquals([e.status, e.code], [500, "internal_error"]);
      assert(/engine step \d+, output token 1: .*NaN/.test(e.message), e.message);
    }
    const ok = [settled[0]!, settled[3]!].map((r) => {
      assert(r.status === "fulfilled", String((r as PromiseRejectedResult).reason));
      return r.value;
    });
    for (const r of ok) assertEquals(r.tokenIds.length, 6);
    assert(ok.every((r) => r.tokenIds.every((id) => id >= 0 && id < engine.validVocab)));
    // The failed requests' blocks were freed and reused without leaking NaN.
    const again = await engine.generate({ id: "again", promptIds: healthy, sampling: greedy });
    assertEquals(again.tokenIds, ok[0]!.tokenIds);
    await engine.close();
    await Deno.remove(dir, { recursive: true });
  },
);

gpuTest("the KV pool never exceeds --kv-cache-memory, and uses most of it", async (gpu) => {
  for (const budget of [1 << 20, 3 * (1 << 20) + 12345, 16 << 20]) {
    const engine = await Engine.load(MODEL, { gpu, kvCacheMemory: budget, blockSize: 16 });
    const runner = engine.runner as ModelRunner;
    const allocated = [...runner.buffers.kCache, ...runner.buffers.vCache]
      .reduce((n, b) => n + b.size, 0);
    assert(allocated <= budget, `${allocated} bytes allocated for a budget of ${budget}`);
    assert(runner.kvBytes <= budget, `kvBytes ${runner.kvBytes} > budget ${budget}`);
    // f32 K and V of one block in every layer; an f16 cache holds twice the tokens.
    const c = engine.config;
    const blockBytes = 2 * c.numLayers * 16 * c.numKvHeads * c.headDim * 4;
    assert(allocated > budget / 2 - blockBytes, `only ${allocated} of ${budget} bytes used`);
    await engine.close();
  }
});

gpuTest(
  "close() destroys a device the engine opened, last, and leaves a given one alone",
  async (gpu) => {
    const sampling = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 3, ignoreEos: true };
    const own = await Engine.load(MODEL, { backend: "webgpu" }); // opens its own device
    await own.generate({ id: "a", promptIds: [300, 301], sampling });
    const device = (own.runner as ModelRunner).gpu;
    await own.close();
    assertEquals((await device.device.lost).reason, "destroyed");
    assertEquals(device.failure, null, "closing is not a failure");

    const shared = await Engine.load(MODEL, { gpu });
    await shared.generate({ id: "b", promptIds: [300, 301], sampling });
    await shared.close();
    const lost = await Promise.race([
      gpu.device.lost.then(() => true),
      new Promise((r) => setTimeout(() => r(false), 50)),
    ]);
    assertEquals(lost, false, "the caller's device is the caller's to destroy");
  },
);
