/**
 * Steps that overlap on WebGPU (issue 8): the end-to-end workload with async
 * scheduling (step n+1 launched while step n runs, fed on the device) against one
 * step at a time, alternated in the same run, at 64 and 256 sequences. On a real
 * GPU it runs the model with the real 0.3B shapes; on a CPU adapter (llvmpipe) a
 * run of those takes minutes, so it runs the tiny model, where the host's share of
 * a step — what overlapping hides — is largest.
 *
 * @module
 */
import { Engine } from "../engine/engine.ts";
import { Gpu } from "../engine/gpu/device.ts";
import { chooseKernelClass } from "../engine/gpu/registry.ts";
import { DEFAULT_SAMPLING } from "../engine/types.ts";
import { generateAll, type RunFigures } from "./_e2e.ts";
import { PHASE, prompts, type Workload } from "./_workload.ts";

/** One size: the best of two runs in each mode. */
export interface OverlapRow {
  readonly sequences: number;
  readonly async: RunFigures & { readonly overlappedSteps: number; readonly steps: number };
  readonly oneStepAtATime: RunFigures;
  readonly asyncOverOneStepAtATime: number;
}

/** The section's figures, or why it did not run. */
export type OverlapFigures =
  | {
    readonly adapter: string;
    readonly kernelClass: "cpu" | "gpu";
    readonly model: string;
    readonly rows: readonly OverlapRow[];
  }
  | { readonly skipped: string };

/** Runs the section: `realDir` on a GPU, `tinyDir` on a CPU adapter. */
export async function stepOverlap(
  realDir: string,
  tinyDir: string,
  w: Workload,
  quick: boolean,
): Promise<OverlapFigures> {
  const adapter = await Gpu.probe();
  if (adapter === null) return { skipped: "no WebGPU adapter" };
  const kernelClass = chooseKernelClass("auto", adapter);
  const dir = kernelClass === "gpu" ? realDir : tinyDir;
  const rows: OverlapRow[] = [];
  for (const n of quick ? [w.sequences] : [64, 256]) {
    const sampling = {
      ...DEFAULT_SAMPLING,
      temperature: 0,
      maxTokens: w.generatedTokens,
      ignoreEos: true,
    };
    const ids = prompts(PHASE.headline, n, w.promptTokens);
    type Figures = RunFigures & { overlappedSteps: number; steps: number };
    const best: Partial<Record<"on" | "off", Figures>> = {};
    for (let rep = 0; rep < 2; rep++) {
      for (const mode of ["on", "off"] as const) {
        const engine = await Engine.load(dir, {
          backend: "webgpu",
          asyncScheduling: mode === "on",
          maxNumSeqs: n,
          maxNumBatchedTokens: 1024,
          kvCacheMemory: 1 << 30,
        });
        try {
          const warm = prompts(PHASE.warmup, 2, w.promptTokens);
          await Promise.all(
            warm.map((promptIds, i) =>
              engine.generate({ id: `w${i}`, promptIds, sampling: { ...sampling, maxTokens: 2 } })
            ),
          );
          const before = { ...engine.stats };
          const { outputs: _, ...run } = await generateAll(
            engine,
            ids.map((promptIds, i) => ({ id: `o${i}`, promptIds, sampling })),
          );
          const figures = {
            ...run,
            overlappedSteps: engine.stats.overlappedSteps - before.overlappedSteps,
            steps: engine.stats.steps - before.steps,
          };
          const kept = best[mode];
          if (kept === undefined || run.tokensPerSecond > kept.tokensPerSecond) {
            best[mode] = figures;
          }
        } finally {
          await engine.close();
        }
      }
    }
    const on = best.on!;
    const { overlappedSteps: _o, steps: _s, ...off } = best.off!;
    rows.push({
      sequences: n,
      async: on,
      oneStepAtATime: off,
      asyncOverOneStepAtATime: +(on.tokensPerSecond / off.tokensPerSecond).toFixed(2),
    });
  }
  return {
    adapter: adapter.description,
    kernelClass,
    model: kernelClass === "gpu"
      ? "real 0.3B shapes, random bf16 weights"
      : "ernie-tiny (on a CPU adapter real shapes take minutes a run)",
    rows,
  };
}
