/**
 * The batch loop: read lines, hand each request to a {@linkcode BatchBackend}
 * (at most `maxInFlight` at once), write each answer as it completes (or in
 * input order), and report a {@linkcode BatchSummary}. Memory stays bounded: a
 * line is read only when a slot frees up, and a slot frees up only once its
 * answer reached the output.
 *
 * @module
 */
import { RequestError } from "../engine/types.ts";
import {
  type BatchFailureCode,
  failureLine,
  httpErrorLine,
  type LineError,
  lineError,
  lineErrorLine,
  parseRequestLine,
  successLine,
} from "./batch_format.ts";
import { countLocalLines, readLines } from "./reader.ts";
import { openOutput, type OutputSink, type UploadOptions } from "./writer.ts";
import { createProgress, type ProgressOptions } from "./progress.ts";
import { batchObject, type BatchStatus, type BatchSummary } from "./summary.ts";

export type { BatchStatus, BatchSummary } from "./summary.ts";
export { formatSummary } from "./summary.ts";

/**
 * What the run loop drives: the engine behind OpenAI-style endpoints.
 *
 * @example
 * ```ts
 * const echo: BatchBackend = {
 *   urls: ["/v1/completions"],
 *   validate(_url, body) {
 *     if (typeof (body as { prompt?: unknown }).prompt !== "string") {
 *       throw new RequestError("expected a string", 400, "prompt");
 *     }
 *   },
 *   run: (_url, body) => Promise.resolve({ object: "text_completion", echo: body }),
 * };
 * ```
 */
export interface BatchBackend {
  /** URLs served, e.g. ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]. */
  readonly urls: readonly string[];
  /** Checks a body without running it (for --validate-only and early rejection); throws RequestError (engine/types.ts). */
  validate(url: string, body: unknown): void;
  /** Runs one request; resolves to the 200 response body; rejects with RequestError for a 4xx; the signal aborts it (timeout, cancel). */
  run(url: string, body: unknown, ctx: { customId: string; signal: AbortSignal }): Promise<unknown>;
}

/** Options for {@linkcode runBatch}. */
export interface RunBatchOptions {
  /** A local path, an http(s) URL or `-` (stdin); gzip is detected. */
  readonly input: string;
  /** A local path, an http(s) URL (PUT at the end) or `-` (stdout). */
  readonly output: string;
  readonly backend: BatchBackend;
  /** Failed requests go here instead of the output (OpenAI style). */
  readonly errorFile?: string;
  readonly outputTmpDir?: string;
  /** Write answers as they complete (default) or in input order. */
  readonly order?: "completion" | "input";
  readonly resume?: boolean;
  readonly overwrite?: boolean;
  /** Check every line (format, url, backend.validate) and run nothing. */
  readonly validateOnly?: boolean;
  /** What an invalid line does: an error line (default), nothing, or stop the batch. */
  readonly onInvalid?: "error-line" | "skip" | "abort";
  /** Requests handed out and answers waiting to be written, at most (default 1024). */
  readonly maxInFlight?: number;
  readonly requestTimeoutMs?: number;
  /** The whole batch's time limit: what has not finished by then is batch_expired. */
  readonly deadlineMs?: number;
  /** Cancels the batch: no new work; in-flight requests get `cancelGraceMs` to finish. */
  readonly signal?: AbortSignal;
  /** Default 3000 ms. */
  readonly cancelGraceMs?: number;
  /** Default 16 MiB. */
  readonly maxLineBytes?: number;
  /** For URL input: give up when no byte arrived for this long (default 60 s). */
  readonly inputIdleTimeoutMs?: number;
  readonly progress?: ProgressOptions;
  /** Where to write an OpenAI-style batch object at the end. */
  readonly summaryFile?: string;
  readonly stdin?: ReadableStream<Uint8Array>;
  readonly stdout?: WritableStream<Uint8Array>;
  readonly upload?: UploadOptions;
}

type StopReason = "cancelled" | "expired" | "failed";

/** A counting semaphore whose permits are held from dispatch until the answer is written. */
class _Slots {
  #free: number;
  #waiting: (() => void)[] = [];
  constructor(size: number) {
    this.#free = size;
  }
  acquire(): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#waiting.push(resolve));
  }
  release(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}

const hex32 = () => crypto.randomUUID().replaceAll("-", "");
const _num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : 0);

/**
 * Runs a batch file through a backend and writes one answer per request.
 * Never throws for a bad line; throws {@linkcode OutputError} /
 * {@linkcode InputError} only when the run cannot start (output exists, input
 * missing). Input failures mid-run, `onInvalid: "abort"` and failed uploads
 * end with status "failed" and the partial output kept for `resume`.
 *
 * @example
 * ```ts
 * const summary = await runBatch({
 *   input: "requests.jsonl", output: "results.jsonl", backend, overwrite: true,
 * });
 * console.log(formatSummary(summary));
 * ```
 */
export async function runBatch(options: RunBatchOptions): Promise<BatchSummary> {
  const startedMs = Date.now();
  const { backend, input } = options;
  const onInvalid = options.onInvalid ?? "error-line";
  const progress = createProgress(options.progress);
  const counts = { total: 0, succeeded: 0, failed: 0, cancelled: 0, resumed: 0, skipped: 0 };
  const tokens = { prompt: 0, completion: 0 };
  let endpoint = "";
  let stop: StopReason | null = null;
  let fatal: string | undefined;
  const inFlight = new Set<AbortController>();
  const timers: ReturnType<typeof setTimeout>[] = [];

  const halt = (reason: StopReason, abortNowWith?: "cancelled" | "expired") => {
    stop ??= reason;
    if (abortNowWith) { for (const c of inFlight) c.abort(abortNowWith); }
  };
  const onCancel = () => {
    if (stop !== null) return;
    halt("cancelled");
    progress.log(`cancelling: waiting ${options.cancelGraceMs ?? 3000} ms for in-flight requests`);
    timers.push(setTimeout(() => halt("cancelled", "cancelled"), options.cancelGraceMs ?? 3000));
  };
  if (options.signal?.aborted) onCancel();
  options.signal?.addEventListener("abort", onCancel, { once: true });
  if (options.deadlineMs !== undefined) {
    timers.push(setTimeout(() => halt("expired", "expired"), options.deadlineMs));
  }
  const counting = options.progress?.quiet
    ? Promise.resolve()
    : countLocalLines(input).then((n) => {
      if (n !== undefined) progress.state.total ??= n;
    }, () => {});

  let sink: OutputSink | null = null;
  let errSink: OutputSink | null = null;
  const writeOpts = { outputTmpDir: options.outputTmpDir, input, stdout: options.stdout };
  try {
    if (!options.validateOnly) {
      sink = await openOutput({ ...writeOpts, ...options, output: options.output });
      if (options.errorFile !== undefined) {
        errSink = await openOutput({
          ...writeOpts,
          output: options.errorFile,
          overwrite: options.overwrite || options.resume,
          upload: options.upload,
        });
      }
    }
    const answered = sink?.answered ?? new Set<string>();
    const seen = new Set<string>();
    const slots = new _Slots(Math.max(1, options.maxInFlight ?? 1024));
    const order = options.order ?? "completion";
    const ready = new Map<number, { line: string; ok: boolean }>();
    const tasks = new Set<Promise<void>>();
    let nextSeq = 0;
    let nextToWrite = 0;

    const writeOne = (line: string, ok: boolean) => {
      const target = ok || errSink === null ? sink : errSink;
      target!.write(line).then(() => slots.release(), (e) => {
        fatal ??= `Cannot write the output: ${(e as Error).message}`;
        halt("failed", "cancelled");
        slots.release();
      });
    };
    /** Records an answer; written now (completion order) or once all earlier ones are. */
    const emit = (seq: number, line: string, ok: boolean) => {
      progress.state.done++;
      if (!ok) progress.state.failed++;
      if (order === "completion") return writeOne(line, ok);
      ready.set(seq, { line, ok });
      for (let r = ready.get(nextToWrite); r !== undefined; r = ready.get(nextToWrite)) {
        ready.delete(nextToWrite++);
        writeOne(r.line, r.ok);
      }
    };
    const reject = (seq: number, error: LineError) => {
      counts.failed++;
      if (options.validateOnly) {
        if (counts.failed <= 1000) progress.log(error.message);
        return slots.release();
      }
      emit(seq, lineErrorLine(error), false);
    };
    const expire = (seq: number, customId: string, code: BatchFailureCode, why: string) => {
      if (code === "request_timeout") counts.failed++;
      else counts.cancelled++;
      emit(seq, failureLine(customId, code, why), false);
    };

    const execute = async (
      seq: number,
      lineNo: number,
      customId: string,
      url: string,
      body: unknown,
    ) => {
      const controller = new AbortController();
      inFlight.add(controller);
      const timer = options.requestTimeoutMs === undefined
        ? undefined
        : setTimeout(() => controller.abort("timeout"), options.requestTimeoutMs);
      const aborted = new Promise<{ aborted: unknown }>((resolve) =>
        controller.signal.addEventListener(
          "abort",
          () => resolve({ aborted: controller.signal.reason }),
        )
      );
      const running = backend.run(url, body, { customId, signal: controller.signal }).then(
        (value) => ({ value }),
        (error: unknown) =>
          controller.signal.aborted ? { aborted: controller.signal.reason } : { error },
      );
      const result: { value?: unknown; error?: unknown; aborted?: unknown } = await Promise.race([
        running,
        aborted,
      ]);
      clearTimeout(timer);
      inFlight.delete(controller);
      if ("aborted" in result) {
        const reason = result.aborted;
        if (reason === "timeout") {
          expire(
            seq,
            customId,
            "request_timeout",
            `line ${lineNo}: request timed out after ${options.requestTimeoutMs} ms`,
          );
        } else if (reason === "expired") {
          expire(
            seq,
            customId,
            "batch_expired",
            `line ${lineNo}: the batch deadline passed before this request finished`,
          );
        } else {
          expire(
            seq,
            customId,
            "batch_cancelled",
            `line ${lineNo}: the batch was cancelled before this request finished`,
          );
        }
      } else if ("error" in result) {
        counts.failed++;
        const e = result.error;
        const body = e instanceof RequestError
          ? { message: `line ${lineNo}: ${e.message}`, type: e.type, param: e.param, code: e.code }
          : {
            message: `line ${lineNo}: internal error: ${(e as Error)?.message ?? String(e)}`,
            type: "server_error",
            param: null,
            code: "internal_error",
          };
        emit(seq, httpErrorLine(customId, e instanceof RequestError ? e.status : 500, body), false);
      } else {
        counts.succeeded++;
        const usage = (result.value as { usage?: Record<string, unknown> } | null)?.usage;
        tokens.prompt += _num(usage?.prompt_tokens);
        tokens.completion += _num(usage?.completion_tokens);
        progress.state.completionTokens = tokens.completion;
        emit(seq, successLine(customId, result.value), true);
      }
    };

    try {
      for await (
        const line of readLines(input, {
          stdin: options.stdin,
          maxLineBytes: options.maxLineBytes,
          idleTimeoutMs: options.inputIdleTimeoutMs,
        })
      ) {
        counts.total++;
        let parsed = line.error === undefined ? parseRequestLine(line.lineNo, line.text) : {
          ok: false as const,
          error: {
            ...lineError(line.lineNo, null, "", null, "invalid_line"),
            message: line.error,
          },
        };
        if (parsed.ok) {
          const { customId, url, lineNo, body } = parsed.request;
          if (answered.has(customId) && !seen.has(customId)) {
            seen.add(customId);
            counts.resumed++;
            counts.succeeded++;
            progress.state.done++;
            continue;
          }
          if (seen.has(customId)) {
            parsed = {
              ok: false,
              error: lineError(
                lineNo,
                customId,
                `field "custom_id": duplicate "${customId}" (an earlier line has it)`,
                "custom_id",
                "duplicate_custom_id",
              ),
            };
          } else if (!backend.urls.includes(url)) {
            parsed = {
              ok: false,
              error: lineError(
                lineNo,
                customId,
                `field "url": unsupported "${url}" (supported: ${backend.urls.join(", ")})`,
                "url",
                "unsupported_url",
              ),
            };
          } else {
            try {
              backend.validate(url, body);
            } catch (e) {
              if (!(e instanceof RequestError)) throw e;
              const param = e.param === null ? "body" : `body.${e.param}`;
              parsed = {
                ok: false,
                error: lineError(
                  lineNo,
                  customId,
                  `field "${param}": ${e.message}`,
                  e.param,
                  e.code ?? "invalid_field",
                  e.status,
                ),
              };
            }
          }
          seen.add(customId);
        }
        if (!parsed.ok && onInvalid === "skip") {
          counts.skipped++;
          progress.log(`skipped ${parsed.error.message}`);
          continue;
        }
        if (!parsed.ok && onInvalid === "abort") {
          fatal = `stopped at the first invalid line (onInvalid "abort"): ${parsed.error.message}`;
          halt("failed");
          break;
        }
        await slots.acquire();
        if (stop === "failed") break;
        const seq = nextSeq++;
        if (!parsed.ok) {
          reject(seq, parsed.error);
          continue;
        }
        const { customId, url, lineNo, body } = parsed.request;
        if (options.validateOnly) {
          slots.release();
        } else if (stop === "cancelled" || stop === "expired") {
          const code = stop === "cancelled" ? "batch_cancelled" : "batch_expired";
          expire(
            seq,
            customId,
            code,
            `line ${lineNo}: the batch was ${
              stop === "cancelled" ? "cancelled" : "past its deadline"
            } before this request ran`,
          );
        } else {
          endpoint ||= url;
          const task = execute(seq, lineNo, customId, url, body);
          tasks.add(task);
          task.finally(() => tasks.delete(task));
        }
      }
    } catch (e) {
      fatal = (e as Error).message;
      halt("failed");
    }
    while (tasks.size > 0) await Promise.all([...tasks]);
    progress.state.total = counts.total;

    let outputPath = "";
    let errorPath: string | undefined;
    if (sink !== null) {
      if (stop === "failed") {
        outputPath = (await sink.keep()) ?? "-";
        errorPath = (await errSink?.keep()) ?? undefined;
        if (sink.partialPath !== null) {
          fatal += `; partial output kept in "${sink.partialPath}" (run again with --resume)`;
        }
      } else {
        const committed = await sink.commit();
        outputPath = committed.path;
        errorPath = (await errSink?.commit())?.path;
        if (committed.error !== undefined) {
          fatal = committed.error;
          stop = "failed";
        }
      }
    }
    const status: BatchStatus = stop ?? (options.validateOnly ? "validated" : "completed");
    const summary: BatchSummary = {
      id: `batch_${hex32()}`,
      status,
      ...counts,
      promptTokens: tokens.prompt,
      completionTokens: tokens.completion,
      elapsedMs: Date.now() - startedMs,
      outputPath,
      errorPath,
      error: fatal,
      createdAt: Math.floor(startedMs / 1000),
      completedAt: Math.floor(Date.now() / 1000),
    };
    if (options.summaryFile !== undefined) {
      await Deno.writeTextFile(
        options.summaryFile,
        JSON.stringify(batchObject(summary, endpoint, input), null, 2) + "\n",
      );
    }
    return summary;
  } catch (e) {
    // Could not start (or an internal failure): keep what was written.
    await sink?.keep().catch(() => {});
    await errSink?.keep().catch(() => {});
    throw e;
  } finally {
    options.signal?.removeEventListener("abort", onCancel);
    for (const t of timers) clearTimeout(t);
    await counting;
    progress.stop();
  }
}
