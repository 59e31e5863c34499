/**
 * End to end on our engine: the workload of `_workload.ts` on a model with
 * the real 0.3B shapes (random bf16 weights), on the backend asked for.
 *
 * @module
 */
import { Engine, type EngineOptions } from "../engine/engine.ts";
import { DEFAULT_SAMPLING, type GenerateRequest } from "../engine/types.ts";
import { PHASE, prompts, type Workload } from "./_workload.ts";

/** One timed generation run. */
export interface RunFigures {
  readonly sequences: number;
  readonly generatedTokens: number;
  readonly seconds: number;
  readonly tokensPerSecond: number;
}

/** Our engine's figures. */
export interface OursFigures {
  /** The backend as the runner describes itself ("webgpu: llvmpipe …", "wasm: 2 threads"). */
  readonly backend: string;
  readonly headline: RunFigures & { steps: number; meanBatchOccupancy: number };
  readonly batching: RunFigures;
  readonly oneAtATime: RunFigures;
  readonly batchingOverOneAtATime: number;
  readonly kvCacheMiB: number;
  readonly weightsMiB: number;
  readonly peakRssMiB: number;
}

/** The backend choices `--backend` accepts. */
export const BACKENDS = ["auto", "webgpu", "wasm"] as const;
/** A `--backend` value. */
export type BackendFlag = typeof BACKENDS[number];

function requests(tag: string, ids: number[][], maxTokens: number): GenerateRequest[] {
  return ids.map((promptIds, i) => ({
    id: `${tag}${i}`,
    promptIds,
    sampling: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens, ignoreEos: true },
  }));
}

/** Runs requests all at once (or one after another) and times them. */
export async function generateAll(
  engine: Engine,
  reqs: GenerateRequest[],
  oneAtATime = false,
): Promise<RunFigures & { outputs: number[][] }> {
  const t0 = performance.now();
  const outputs: number[][] = [];
  if (oneAtATime) {
    for (const r of reqs) outputs.push([...(await engine.generate(r)).tokenIds]);
  } else {
    const out = await Promise.all(reqs.map((r) => engine.generate(r)));
    outputs.push(...out.map((r) => [...r.tokenIds]));
  }
  const seconds = (performance.now() - t0) / 1000;
  const tokens = outputs.reduce((n, o) => n + o.length, 0);
  return {
    sequences: reqs.length,
    generatedTokens: tokens,
    seconds: +seconds.toFixed(2),
    tokensPerSecond: +(tokens / seconds).toFixed(2),
    outputs,
  };
}

/** Opens an engine on `dir` with the bench's sizes. */
export function openEngine(dir: string, backend: BackendFlag, w: Workload): Promise<Engine> {
  return Engine.load(dir, {
    backend: backend as NonNullable<EngineOptions["backend"]>,
    maxNumSeqs: Math.max(w.sequences, w.batchingSequences),
    maxNumBatchedTokens: 512,
    kvCacheMemory: 1 << 30,
  });
}

/** The workload on our engine: headline batch, batching batch, one at a time. */
export async function runOurs(
  dir: string,
  backend: BackendFlag,
  w: Workload,
): Promise<OursFigures> {
  const engine = await openEngine(dir, backend, w);
  try {
    const gen = w.generatedTokens;
    await generateAll(engine, requests("warm", prompts(PHASE.warmup, 2, w.promptTokens), 2));
    const before = { ...engine.stats };
    const head = await generateAll(
      engine,
      requests("h", prompts(PHASE.headline, w.sequences, w.promptTokens), gen),
    );
    const steps = engine.stats.steps - before.steps;
    const occupancy = (engine.stats.seqsInSteps - before.seqsInSteps) / Math.max(1, steps);
    const batching = await generateAll(
      engine,
      requests("b", prompts(PHASE.batching, w.batchingSequences, w.promptTokens), gen),
    );
    const single = await generateAll(
      engine,
      requests("s", prompts(PHASE.oneAtATime, w.oneAtATime, w.promptTokens), gen),
      true,
    );
    const strip = ({ outputs: _, ...f }: RunFigures & { outputs: number[][] }) => f;
    return {
      backend: engine.runner.description,
      headline: { ...strip(head), steps, meanBatchOccupancy: +occupancy.toFixed(2) },
      batching: strip(batching),
      oneAtATime: strip(single),
      batchingOverOneAtATime: +(batching.tokensPerSecond / single.tokensPerSecond).toFixed(2),
      kvCacheMiB: +(engine.runner.kvBytes / 2 ** 20).toFixed(1),
      weightsMiB: +(engine.runner.weightBytes / 2 ** 20).toFixed(1),
      peakRssMiB: +(Deno.memoryUsage().rss / 2 ** 20).toFixed(1),
    };
  } finally {
    await engine.close();
  }
}

/** Greedy outputs of our engine for `ids` (the agreement check against the peer). */
export async function greedyOutputs(
  dir: string,
  backend: BackendFlag,
  ids: number[][],
  maxTokens: number,
): Promise<number[][]> {
  const engine = await Engine.load(dir, {
    backend: backend as NonNullable<EngineOptions["backend"]>,
    maxNumSeqs: ids.length,
  });
  try {
    return (await generateAll(engine, requests("a", ids, maxTokens))).outputs;
  } finally {
    await engine.close();
  }
}
