/**
 * What a batch run reports: the {@linkcode BatchSummary} the CLI prints and
 * exits on, and the OpenAI-style batch object written to `--summary-file`.
 *
 * @module
 */

/** How the run ended. */
export type BatchStatus = "completed" | "validated" | "cancelled" | "expired" | "failed";

/**
 * The outcome of a batch run.
 *
 * @example
 * ```ts
 * import { type BatchBackend, runBatch } from "./run_batch.ts";
 *
 * const echo: BatchBackend = {
 *   urls: ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"],
 *   validate() {},
 *   run: (_url, body) => Promise.resolve({ echo: body }),
 * };
 * const output = await Deno.makeTempFile({ suffix: ".jsonl" });
 * const summary: BatchSummary = await runBatch({
 *   input: "examples/input.jsonl",
 *   output,
 *   overwrite: true,
 *   backend: echo,
 * });
 * console.log(summary.status, summary.succeeded === summary.total); // completed true
 * await Deno.remove(output);
 * ```
 */
export interface BatchSummary {
  /** `batch_<32 hex>`. */
  readonly id: string;
  /** How the run ended. */
  readonly status: BatchStatus;
  /** Requests read (non-blank input lines), answered earlier ones included. */
  readonly total: number;
  /** Answered with status 200, including those kept from an earlier run (`resumed`). */
  readonly succeeded: number;
  /** Answered with an error line (invalid line, 4xx, 5xx, request_timeout). */
  readonly failed: number;
  /** Answered batch_cancelled or batch_expired. */
  readonly cancelled: number;
  /** Kept from an earlier run by `resume` (not run again). */
  readonly resumed: number;
  /** Invalid lines left out (`onInvalid: "skip"`). */
  readonly skipped: number;
  /** Prompt tokens of the answered requests (from their usage). */
  readonly promptTokens: number;
  /** Completion tokens of the answered requests (from their usage). */
  readonly completionTokens: number;
  /** Wall time of the run. */
  readonly elapsedMs: number;
  /** The output's final path or URL; a kept local file when it could not be put in place. */
  readonly outputPath: string;
  /** The error file's final path, when there is one. */
  readonly errorPath?: string;
  /** Why the run did not complete (status failed), for the user. */
  readonly error?: string;
  /** Unix seconds, as OpenAI's batch object has them. */
  readonly createdAt: number;
  /** Unix seconds. */
  readonly completedAt: number;
}

/**
 * One line a person reads at the end of a run.
 *
 * @example
 * ```ts
 * import { type BatchBackend, runBatch } from "./run_batch.ts";
 *
 * const echo: BatchBackend = {
 *   urls: ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"],
 *   validate() {},
 *   run: (_url, body) => Promise.resolve({ echo: body }),
 * };
 * const output = await Deno.makeTempFile({ suffix: ".jsonl" });
 * const input = "examples/input.jsonl";
 * const summary = await runBatch({ input, output, overwrite: true, backend: echo });
 * console.log(formatSummary(summary));
 * // completed: 8/8 succeeded, 0 failed, 0 cancelled; 0 completion tokens in 0.0s → /tmp/….jsonl
 * await Deno.remove(output);
 * ```
 */
export function formatSummary(s: BatchSummary): string {
  const seconds = (s.elapsedMs / 1000).toFixed(1);
  const extra = [
    s.resumed > 0 ? `${s.resumed} kept from an earlier run` : "",
    s.skipped > 0 ? `${s.skipped} invalid lines skipped` : "",
  ].filter((x) => x !== "").join(", ");
  const where = s.outputPath === "" ? "" : ` → ${s.outputPath}`;
  const why = s.error === undefined ? "" : ` (${s.error})`;
  return `${s.status}: ${s.succeeded}/${s.total} succeeded, ${s.failed} failed, ` +
    `${s.cancelled} cancelled${extra === "" ? "" : `, ${extra}`}; ` +
    `${s.completionTokens} completion tokens in ${seconds}s${where}${why}`;
}

/**
 * The summary as OpenAI's batch object (`object: "batch"`), for `--summary-file`.
 *
 * @example
 * ```ts
 * import { type BatchBackend, runBatch } from "./run_batch.ts";
 *
 * const echo: BatchBackend = {
 *   urls: ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"],
 *   validate() {},
 *   run: (_url, body) => Promise.resolve({ echo: body }),
 * };
 * const output = await Deno.makeTempFile({ suffix: ".jsonl" });
 * const input = "examples/input.jsonl";
 * const summary = await runBatch({ input, output, overwrite: true, backend: echo });
 * const json = batchObject(summary, "/v1/chat/completions", input);
 * console.log(json.status, json.request_counts); // completed { total: 8, completed: 8, failed: 0 }
 * await Deno.remove(output);
 * ```
 */
export function batchObject(
  s: BatchSummary,
  endpoint: string,
  inputFile: string,
): Record<string, unknown> {
  const done = s.completedAt;
  return {
    id: s.id,
    object: "batch",
    endpoint,
    errors: s.error === undefined ? null : { object: "list", data: [{ message: s.error }] },
    input_file_id: inputFile,
    completion_window: "24h",
    status: s.status,
    output_file_id: s.outputPath,
    error_file_id: s.errorPath ?? null,
    created_at: s.createdAt,
    in_progress_at: s.createdAt,
    completed_at: s.status === "completed" ? done : null,
    failed_at: s.status === "failed" ? done : null,
    cancelled_at: s.status === "cancelled" ? done : null,
    expired_at: s.status === "expired" ? done : null,
    request_counts: { total: s.total, completed: s.succeeded, failed: s.failed + s.cancelled },
    usage: {
      prompt_tokens: s.promptTokens,
      completion_tokens: s.completionTokens,
      total_tokens: s.promptTokens + s.completionTokens,
    },
  };
}
