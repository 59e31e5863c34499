/**
 * batchwright: batch inference for ERNIE-4.5 on WebGPU.
 *
 * The library has two entry points: {@linkcode Engine} (load a model, then
 * `generate` or `embed`) and {@linkcode runBatch} (a JSONL batch file in, a
 * JSONL of answers out, over any {@linkcode BatchBackend} such as
 * {@linkcode ApiBackend}).
 *
 * @example
 * ```ts
 * import { ApiBackend, Engine, runBatch } from "./mod.ts";
 *
 * const engine = await Engine.load("models/ernie-tiny");
 * const summary = await runBatch({
 *   input: "examples/input.jsonl",
 *   output: "examples/output.jsonl",
 *   overwrite: true,
 *   backend: new ApiBackend(engine),
 * });
 * console.log(summary.succeeded);
 * await engine.close();
 * ```
 *
 * @module
 */
export { Engine, type EngineOptions, type EngineStats } from "./engine/engine.ts";
export { ApiBackend } from "./api/backend.ts";
export {
  type BatchBackend,
  type BatchSummary,
  formatSummary,
  runBatch,
  type RunBatchOptions,
} from "./io/run_batch.ts";
export {
  DEFAULT_SAMPLING,
  type EmbedRequest,
  type EmbedResult,
  type GenerateRequest,
  type GenerateResult,
  RequestError,
  type SamplingParams,
} from "./engine/types.ts";
export { Gpu, NoGpuError } from "./engine/gpu/device.ts";
