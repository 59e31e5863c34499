/**
 * The GEMV yardstick of issue 9: at M = 1 (one sequence decoding) a matmul
 * only streams its weights, so its speed is bytes per second, held against
 * what this machine's memory delivers. The memory side is numpy's f32 GEMV
 * (OpenBLAS, all cores) over a 512 MiB matrix, far past the last-level cache;
 * ours is the wasm backend's per-op profile of a real decode (one sequence on
 * the model with the real 0.3B shapes, 0.72 GB of bf16 weights per token, so
 * every weight comes from memory, not from cache).
 *
 * @module
 */
import { Engine } from "../engine/engine.ts";
import { DEFAULT_SAMPLING } from "../engine/types.ts";
import type { KernelStat } from "../engine/gpu/profile.ts";
import { PHASE, prompts } from "./_workload.ts";
import { pythonNumber } from "./_kernels.ts";

/** One matmul op of the decode profile. */
export interface GemvOp {
  readonly op: string;
  readonly calls: number;
  readonly gbPerSecond: number;
  readonly ratioToMemory: number | null;
}

/** What the bandwidth section records. */
export interface BandwidthFigures {
  /** numpy's f32 GEMV over 512 MiB: what this machine's memory delivers to a tuned reader. */
  readonly numpyGemvGBs: number | null;
  readonly backend: string;
  readonly decodeSteps: number;
  /** The five matmuls of a decode step, weights streamed at M = 1. */
  readonly ops: readonly GemvOp[];
  /** All matmul bytes of the decode steps over all matmul time. */
  readonly matmulGBs: number;
  readonly matmulRatioToMemory: number | null;
  /** Share of the step's time spent in the matmuls. */
  readonly matmulShare: number;
}

/** numpy's f32 GEMV read bandwidth in GB/s (best of 5 over a 512 MiB matrix), or null. */
export async function numpyGemvGBs(): Promise<number | null> {
  const script = `
import numpy as np, time
w = np.ones((32768, 4096), dtype=np.float32); x = np.ones(4096, dtype=np.float32)
w @ x
best = min((lambda t0: (w @ x, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
print(w.nbytes / best / 1e9)`;
  return await pythonNumber(script);
}

const MATMULS = ["qkv", "o_proj", "gate_up", "down", "lm_head"];

/**
 * Decodes one sequence on the wasm backend with the per-op profile on and
 * returns each matmul's GB/s beside `memoryGBs`.
 */
export async function gemvBandwidth(
  dir: string,
  memoryGBs: number | null,
  generated = 24,
): Promise<BandwidthFigures> {
  const engine = await Engine.load(dir, {
    backend: "wasm",
    profile: true,
    maxNumSeqs: 1,
    maxNumBatchedTokens: 512,
    kvCacheMemory: 1 << 28,
  });
  try {
    const sampling = { ...DEFAULT_SAMPLING, temperature: 0, ignoreEos: true };
    // One-token prompts: every step, the first included, is a matmul at M = 1.
    const [warm, prompt] = prompts(PHASE.bandwidth, 2, 1);
    await engine.generate({
      id: "warm",
      promptIds: warm!,
      sampling: { ...sampling, maxTokens: 4 },
    });
    engine.resetKernelProfile();
    await engine.generate({
      id: "decode",
      promptIds: prompt!,
      sampling: { ...sampling, maxTokens: generated },
    });
    const p = engine.kernelProfile()!;
    const ratio = (gbs: number) => (memoryGBs ? +(gbs / memoryGBs).toFixed(3) : null);
    const matmuls = p.kernels.filter((k) => MATMULS.includes(k.label));
    const gbs = (k: Pick<KernelStat, "bytes" | "seconds">) => k.bytes / k.seconds / 1e9;
    const sum = (ks: readonly KernelStat[], f: (k: KernelStat) => number) =>
      ks.reduce((n, k) => n + f(k), 0);
    const all = { bytes: sum(matmuls, (k) => k.bytes), seconds: sum(matmuls, (k) => k.seconds) };
    return {
      numpyGemvGBs: memoryGBs && +memoryGBs.toFixed(1),
      backend: engine.runner.description,
      decodeSteps: p.steps,
      ops: MATMULS.map((op) => matmuls.find((k) => k.label === op)!).map((k) => ({
        op: k.label,
        calls: k.calls,
        gbPerSecond: +gbs(k).toFixed(1),
        ratioToMemory: ratio(gbs(k)),
      })),
      matmulGBs: +gbs(all).toFixed(1),
      matmulRatioToMemory: ratio(gbs(all)),
      matmulShare: +(all.seconds / sum(p.kernels, (k) => k.seconds)).toFixed(3),
    };
  } finally {
    await engine.close();
  }
}
