/**
 * Runners on the fixture models for the tests that run every backend against
 * the float64 reference: the WebGPU `ModelRunner` and the WebAssembly
 * `WasmRunner`, built from a model directory with small capacities.
 *
 * @module
 */
import { loadModelConfig } from "../engine/loader/config.ts";
import { Checkpoint } from "../engine/loader/checkpoint.ts";
import type { ModelShape, WeightSource } from "../engine/model.ts";
import type { Runner, RunnerOptions } from "../engine/runner.ts";
import { WasmRunner } from "../engine/backends/wasm/wasm_runner.ts";
import { ModelRunner } from "../engine/model_runner.ts";
import type { EngineOptions } from "../engine/engine.ts";
import { gpuTest } from "./_gpu.ts";

/** Opens a model directory's weights and builds a runner with `create`. */
export async function withWeights<R extends Runner>(
  dir: string,
  create: (shape: ModelShape, source: WeightSource, o: RunnerOptions) => Promise<R>,
  o: Partial<RunnerOptions> = {},
): Promise<R> {
  const config = await loadModelConfig(dir);
  const ckpt = await Checkpoint.open(dir, config);
  const names = new Set(ckpt.names());
  try {
    return await create(config, {
      get: (n) => (names.has(n) ? ckpt.get(n) : Promise.resolve(null)),
    }, {
      maxNumBatchedTokens: 128,
      maxNumSeqs: 4,
      numBlocks: 64,
      blockSize: 16,
      maxBlocksPerSeq: 32,
      validVocab: config.vocabSize,
      ...o,
    });
  } finally {
    ckpt.close();
  }
}

/** A WasmRunner on two threads over a model directory. */
export function makeWasmRunner(
  dir: string,
  o: Partial<RunnerOptions>,
  threads = 2,
): Promise<WasmRunner> {
  return withWeights(
    dir,
    (shape, source, opts) => WasmRunner.create(shape, source, opts, { threads }),
    o,
  );
}

/** Builds a runner of the test's backend over a model directory. */
export type MakeRunner = (
  dir: string,
  blockSize: number,
) => Promise<Runner & { shape: ModelShape }>;

/**
 * Registers `name` once per backend: WebGPU (skipped without an adapter) and wasm; `fn`
 * gets a runner factory and the Engine options that select the backend.
 */
export function backendTest(
  name: string,
  fn: (make: MakeRunner, engine: EngineOptions) => Promise<void>,
): void {
  gpuTest(`${name} [webgpu]`, (gpu) =>
    fn(
      (dir, blockSize) =>
        withWeights(dir, (shape, source, o) => ModelRunner.create(gpu, shape, source, o), {
          blockSize,
        }),
      { gpu },
    ));
  Deno.test(`${name} [wasm]`, () =>
    fn((dir, blockSize) => makeWasmRunner(dir, { blockSize }), { backend: "wasm", threads: 2 }));
}
