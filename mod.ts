/**
 * batchwright: batch inference for ERNIE-4.5 on WebGPU, or on the CPU in
 * WebAssembly SIMD when there is no GPU.
 *
 * {@linkcode Batchwright} is the library in one class: load a model (a
 * directory or a hub id), answer OpenAI-style requests one at a time
 * (`request`) or a stream of batch lines (`batch`, an async iterable of
 * answers), close. {@linkcode runBatch} runs a whole JSONL file to a JSONL
 * file, as the `run-batch` command does, and {@linkcode Engine} is the
 * token-level engine underneath.
 *
 * @example
 * ```ts
 * import { Batchwright } from "./mod.ts";
 *
 * await using llm = await Batchwright.load("models/ernie-tiny");
 * const lines = [
 *   { custom_id: "a", method: "POST", url: "/v1/chat/completions",
 *     body: { messages: [{ role: "user", content: "Hi" }], max_tokens: 4 } },
 *   { custom_id: "b", method: "POST", url: "/v1/embeddings", body: { input: "Hi" } },
 * ];
 * for await (const answer of llm.batch(lines)) {
 *   console.log(answer.custom_id, answer.response?.status_code);
 * }
 * ```
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
export {
  type BatchAnswer,
  type BatchOptions,
  Batchwright,
  type BatchwrightOptions,
  type BatchwrightProgress,
  type Endpoint,
} from "./api/batchwright.ts";
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
