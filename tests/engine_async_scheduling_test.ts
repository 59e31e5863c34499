/**
 * Async scheduling (issue 8's overlapping steps): step n+1 is scheduled and launched
 * while step n runs, its decode inputs fed on the device from step n's draws. Every
 * answer must be the one the engine gives one step at a time, whatever ends a request
 * (length, an end id, a stop string found while two steps are in flight, an abort), with
 * preemption, prefix caching and rows that cannot be fed (logprobs, penalties) mixed in.
 */
import { assert, assertEquals } from "./_assert.ts";
import { gpuTest, rng } from "./_gpu.ts";
import { Engine, type EngineOptions } from "../engine/engine.ts";
import {
  DEFAULT_SAMPLING,
  type GenerateRequest,
  type GenerateResult,
  type SamplingParams,
} from "../engine/types.ts";
import type { Gpu } from "../engine/gpu/device.ts";

const MODEL = "models/ernie-tiny";
const KIB = 1024;

function prompt(r: () => number, n: number): number[] {
  return Array.from({ length: n }, () => 300 + Math.floor(r() * 1500));
}

function req(id: string, promptIds: number[], p: Partial<SamplingParams>): GenerateRequest {
  return {
    id,
    promptIds,
    sampling: { ...DEFAULT_SAMPLING, temperature: 0, ignoreEos: true, ...p },
  };
}

/** Greedy and seeded requests of many lengths, some sharing a system prompt. */
function plainRequests(seed: number, n: number): GenerateRequest[] {
  const r = rng(seed);
  const system = prompt(r, 37);
  return Array.from({ length: n }, (_, i) => {
    const sampled = i % 3 === 1;
    return req(`p${i}`, [...(i % 2 === 0 ? system : []), ...prompt(r, 2 + (i * 7) % 29)], {
      maxTokens: 1 + (i * 5) % 19,
      temperature: sampled ? 0.8 : 0,
      topP: sampled ? 0.8 : 1,
      seed: sampled ? 100 + i : undefined,
      minTokens: i % 4 === 3 ? 3 : 0,
      logitBias: i % 5 === 4 ? new Map([[400 + i, 3]]) : new Map(),
    });
  });
}

/** What a request's answer is, for comparing engines. */
function answerOf(r: GenerateResult) {
  return {
    id: r.id,
    tokenIds: [...r.tokenIds],
    text: r.text,
    finishReason: r.finishReason,
    logprobs: r.logprobs?.map((l) => [l.tokenId, l.logprob.toFixed(4)]),
  };
}

async function run(
  gpu: Gpu,
  reqs: GenerateRequest[],
  options: EngineOptions,
  abort?: { readonly id: string; readonly afterSteps: number },
) {
  const controller = new AbortController();
  let steps = 0;
  const engine = await Engine.load(MODEL, {
    gpu,
    ...options,
    onStep: () => {
      if (abort && ++steps === abort.afterSteps) controller.abort(new Error("aborted"));
    },
  });
  try {
    const settled = await Promise.allSettled(
      reqs.map((r) => engine.generate(r, r.id === abort?.id ? controller.signal : undefined)),
    );
    const answers = settled.map((s) =>
      s.status === "fulfilled" ? answerOf(s.value) : `rejected: ${(s.reason as Error).message}`
    );
    return { answers, stats: { ...engine.stats } };
  } finally {
    await engine.close();
  }
}

/** Runs the requests one step at a time and with async scheduling; both answer the same. */
async function assertSameAnswers(
  gpu: Gpu,
  reqs: GenerateRequest[],
  options: EngineOptions,
  abort?: { readonly id: string; readonly afterSteps: number },
) {
  const sync = await run(gpu, reqs, { ...options, asyncScheduling: false }, abort);
  const overlapped = await run(gpu, reqs, options, abort);
  assertEquals(sync.stats.overlappedSteps, 0);
  assert(overlapped.stats.overlappedSteps > 0, "steps overlapped");
  assertEquals(overlapped.answers, sync.answers);
  assertEquals(overlapped.stats.generatedTokens, sync.stats.generatedTokens);
  return { sync, overlapped };
}

for (const kernels of ["cpu", "gpu"] as const) {
  gpuTest(`${kernels} kernels: answers are the same with steps launched ahead`, async (gpu) => {
    // Four at a time: requests are admitted while others decode, chunked prefills included.
    const reqs = plainRequests(1, 18);
    await assertSameAnswers(gpu, reqs, { kernels, maxNumSeqs: 4, maxNumBatchedTokens: 24 });
    // All at once, then with a KV pool too small for them: preemption of sequences whose
    // step is in flight, blocks freed while a step still writes them.
    await assertSameAnswers(gpu, reqs, { kernels, maxNumSeqs: 64 });
    const tight = await assertSameAnswers(gpu, reqs, {
      kernels,
      kvCacheDtype: "f32",
      maxNumSeqs: 64,
      blockSize: 16,
      kvCacheMemory: 12 * 16 * KIB,
    });
    assert(tight.overlapped.stats.preemptions > 0, "the tight KV pool forces preemption");
  });
}

/** The tiny model's tokenizer, for stop strings. */
const tokenizer = await Engine.load(MODEL, { backend: "wasm", threads: 1 }).then(async (e) => {
  await e.close();
  return e.tokenizer;
});

gpuTest("end ids and stop strings end a request while later steps are in flight", async (gpu) => {
  const r = rng(7);
  const base = Array.from(
    { length: 8 },
    (_, i) => req(`b${i}`, prompt(r, 5 + i), { maxTokens: 24 }),
  );
  const free = await run(gpu, base, { kernels: "gpu", asyncScheduling: false });
  const reqs: GenerateRequest[] = [];
  free.answers.forEach((a, i) => {
    if (typeof a === "string") throw new Error(a);
    const mid = 3 + (i % 6);
    const sampling = base[i]!.sampling;
    // An end id the greedy answer reaches at token `mid`, with the next steps in flight.
    reqs.push({
      ...base[i]!,
      id: `eos${i}`,
      sampling: { ...sampling, stopTokenIds: [a.tokenIds[mid]!] },
    });
    // A stop string across the text of tokens mid - 1 and mid.
    const before = tokenizer.decode(a.tokenIds.slice(0, mid - 1));
    const stop = tokenizer.decode(a.tokenIds.slice(0, mid + 1)).slice(
      Math.max(0, before.length - 1),
    );
    if (stop.length >= 2) {
      reqs.push({ ...base[i]!, id: `stop${i}`, sampling: { ...sampling, stop: [stop] } });
    }
  });
  // Device-drawn rows go on ahead; rows that want logprobs or penalties wait for their ids.
  reqs.push(req("logprobs", prompt(r, 9), { maxTokens: 9, logprobs: true, topLogprobs: 2 }));
  reqs.push(
    req("penalty", prompt(r, 6), {
      maxTokens: 9,
      repetitionPenalty: 1.3,
      temperature: 0.7,
      seed: 5,
    }),
  );
  const { overlapped } = await assertSameAnswers(gpu, reqs, { kernels: "gpu", maxNumSeqs: 8 });
  const answers = overlapped.answers.filter((a) => typeof a !== "string");
  assertEquals(answers.length, reqs.length);
  const ended = (prefix: string) =>
    answers.filter((a) => a.id.startsWith(prefix) && a.finishReason === "stop").length;
  assert(ended("eos") >= 6, `${ended("eos")} requests ended by an end id`);
  assert(ended("stop") >= 4, `${ended("stop")} requests ended by a stop string`);
});

gpuTest("an abort while two steps are in flight ends that request alone", async (gpu) => {
  const r = rng(3);
  const reqs = Array.from(
    { length: 6 },
    (_, i) => req(`a${i}`, prompt(r, 4 + i), { maxTokens: 30 }),
  );
  const { overlapped } = await assertSameAnswers(gpu, reqs, { kernels: "gpu" }, {
    id: "a2",
    afterSteps: 6,
  });
  assertEquals(overlapped.answers[2], "rejected: aborted");
  assertEquals(overlapped.answers.filter((a) => typeof a === "string").length, 1);
});

gpuTest("embeddings beside generations are the same with steps launched ahead", async (gpu) => {
  const both = async (asyncScheduling: boolean) => {
    const engine = await Engine.load(MODEL, { gpu, kernels: "gpu", asyncScheduling });
    try {
      const r = rng(9);
      const gens = Array.from(
        { length: 4 },
        (_, i) => engine.generate(req(`g${i}`, prompt(r, 5 + i), { maxTokens: 12 })),
      );
      const vectors = [11, 3, 40].map((n, i) =>
        engine.embed({ id: `e${i}`, promptIds: prompt(r, n) })
      );
      return {
        gens: (await Promise.all(gens)).map(answerOf),
        vectors: (await Promise.all(vectors)).map((v) => [...v.embedding]),
        overlapped: engine.stats.overlappedSteps,
      };
    } finally {
      await engine.close();
    }
  };
  const sync = await both(false);
  const overlapped = await both(true);
  assert(overlapped.overlapped > 0, "steps overlapped");
  assertEquals(overlapped.gens, sync.gens);
  assertEquals(overlapped.vectors, sync.vectors);
});

gpuTest(
  "every decode step of a lone request is launched while the one before runs",
  async (gpu) => {
    for (const kernels of ["cpu", "gpu"] as const) {
      const engine = await Engine.load(MODEL, { gpu, kernels });
      try {
        const r = await engine.generate(req("lone", [5, 6, 7, 8], { maxTokens: 20 }));
        assertEquals(r.tokenIds.length, 20);
        // One prefill step, then 19 decode steps, each launched before the last one landed.
        assertEquals(engine.stats.steps, 20);
        assertEquals(engine.stats.overlappedSteps, 19);
      } finally {
        await engine.close();
      }
    }
  },
);
