/**
 * The batch loop: read lines, hand each request to a {@linkcode BatchBackend}
 * (at most `maxInFlight` at once), write each answer as it completes (or in
 * input order), and report a {@linkcode BatchSummary}. Memory stays bounded: a
 * line is read only when a slot frees up, and a slot frees up only once its
 * answer reached the output.
 *
 * @module
 */
import {
  admitLine,
  type Answer,
  answerFor,
  type BatchBackend,
  Emitter,
  executeRequest,
  failureAnswer,
  invalidAnswer,
  Slots,
  Stopper,
} from "./batch_stages.ts";
import type { BatchRequest } from "./batch_format.ts";
import { EngineFailure } from "../engine/types.ts";
import { countLocalLines, type InputLine, readLines } from "./reader.ts";
import { openOutput, type OutputSink, type UploadOptions } from "./writer.ts";
import { preflightBatch } from "./preflight.ts";
import { createProgress, type Progress, type ProgressOptions } from "./progress.ts";
import { batchObject, type BatchStatus, type BatchSummary } from "./summary.ts";

export type { BatchStatus, BatchSummary } from "./summary.ts";
export type { Answer, BatchBackend } from "./batch_stages.ts";
export type { ProgressOptions, ProgressState } from "./progress.ts";
export type { UploadOptions } from "./writer.ts";
export { formatSummary } from "./summary.ts";

/** Shard `index` of `count` (0 ≤ index < count). */
export interface Shard {
  /** Which shard, from 0. */
  readonly index: number;
  /** How many shards split the input. */
  readonly count: number;
}

/** Whether the line at 0-based `lineIndex` belongs to `shard` (every line does without one). */
export function inShard(shard: Shard | undefined, lineIndex: number): boolean {
  return shard === undefined || lineIndex % shard.count === shard.index;
}

/**
 * Options for {@linkcode runBatch}.
 *
 * @example
 * ```ts
 * const echo: BatchBackend = {
 *   urls: ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"],
 *   validate() {},
 *   run: (_url, body) => Promise.resolve({ echo: body }),
 * };
 * const output = await Deno.makeTempFile({ suffix: ".jsonl" });
 * const options: RunBatchOptions = {
 *   input: "examples/input.jsonl",
 *   output,
 *   backend: echo,
 *   overwrite: true,
 *   order: "input",
 *   maxInFlight: 4,
 * };
 * const summary = await runBatch(options);
 * const first = (await Deno.readTextFile(output)).split("\n")[0]!;
 * console.log(summary.succeeded, JSON.parse(first).custom_id); // 8 "req-00001"
 * await Deno.remove(output);
 * ```
 */
export interface RunBatchOptions {
  /** A local path, an http(s) URL or `-` (stdin); gzip is detected. */
  readonly input: string;
  /** A local path, an http(s) URL (PUT at the end) or `-` (stdout). */
  readonly output: string;
  /** Runs the requests (`ApiBackend` over an engine). */
  readonly backend: BatchBackend;
  /** Failed requests go here instead of the output (OpenAI style). */
  readonly errorFile?: string;
  /** Where `OUTPUT.partial` waits (default: beside the output; a temp dir for URLs). */
  readonly outputTmpDir?: string;
  /** Write answers as they complete (default) or in input order. */
  readonly order?: "completion" | "input";
  /** Keep the successful answers of an earlier run of this output and run only the rest. */
  readonly resume?: boolean;
  /** Replace an existing output (else it is refused). */
  readonly overwrite?: boolean;
  /** Check every line (format, url, backend.validate) and run nothing. */
  readonly validateOnly?: boolean;
  /** What an invalid line does: an error line (default), nothing, or stop the batch. */
  readonly onInvalid?: "error-line" | "skip" | "abort";
  /** Requests handed out and answers waiting to be written, at most (default 1024). */
  readonly maxInFlight?: number;
  /** A request still running after this gets `request_timeout`. */
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
  /** Progress reports on stderr (default: none; the CLI passes `{}` for its progress bar). */
  readonly progress?: ProgressOptions;
  /** Where to write an OpenAI-style batch object at the end. */
  readonly summaryFile?: string;
  /**
   * Run only this shard's requests: those on input lines whose 0-based line
   * index is `index` mod `count` (blank lines count, so the split depends
   * on nothing but line positions). Other lines are not read into the run.
   */
  readonly shard?: Shard;
  /** Called as each answer is recorded (for metrics); not for answers kept by resume. */
  readonly onAnswer?: (answer: Answer) => void;
  /** Read for input `-` (default: `Deno.stdin.readable`). */
  readonly stdin?: ReadableStream<Uint8Array>;
  /** Written for output `-` (default: `Deno.stdout.writable`; never closed). */
  readonly stdout?: WritableStream<Uint8Array>;
  /** Retries of the PUT when the output is a URL. */
  readonly upload?: UploadOptions;
}

/** The outputs of a run: answers, and failures when there is an error file. */
interface Sinks {
  readonly sink: OutputSink;
  readonly errSink: OutputSink | null;
}

/** Stage 1: opens the output (and error file); null for validateOnly, which writes nothing. */
async function openSinks(options: RunBatchOptions): Promise<Sinks | null> {
  if (options.validateOnly) return null;
  const common = {
    outputTmpDir: options.outputTmpDir,
    input: options.input,
    stdout: options.stdout,
  };
  const sink = await openOutput({ ...common, ...options, output: options.output });
  if (options.errorFile === undefined) return { sink, errSink: null };
  try {
    const errSink = await openOutput({
      ...common,
      output: options.errorFile,
      overwrite: options.overwrite || options.resume,
      upload: options.upload,
    });
    return { sink, errSink };
  } catch (e) {
    await sink.keep().catch(() => {});
    throw e;
  }
}

/** The run's counters: what the summary reports. */
interface Tally {
  total: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  resumed: number;
  skipped: number;
  promptTokens: number;
  completionTokens: number;
}

/** One run: its options, counters, stop state and the tasks still running. */
class _Run {
  readonly tally: Tally = {
    total: 0,
    succeeded: 0,
    failed: 0,
    cancelled: 0,
    resumed: 0,
    skipped: 0,
    promptTokens: 0,
    completionTokens: 0,
  };
  readonly stopper = new Stopper();
  readonly tasks = new Set<Promise<void>>();
  /** Why the run failed, for the user. */
  fatal: string | undefined;
  /** The first request's url (the batch object's endpoint). */
  endpoint = "";
  #nextSeq = 0;

  constructor(
    readonly options: RunBatchOptions,
    readonly progress: Progress,
    /** Held from admission until the answer is written: bounds reading and memory. */
    readonly slots: Slots,
    /** Null for validateOnly, which writes nothing. */
    readonly emitter: Emitter | null,
  ) {}

  /** Stops on a failure that makes the rest of the run pointless. */
  fail(message: string, abortInFlight = false): void {
    this.fatal ??= message;
    this.stopper.halt("failed", abortInFlight ? "cancelled" : undefined);
  }

  /** Counts an answer and hands it to the emitter (it frees its slot once written). */
  record(seq: number, answer: Answer): void {
    this.tally[answer.counts]++;
    this.tally.promptTokens += answer.promptTokens;
    this.tally.completionTokens += answer.completionTokens;
    this.progress.state.done++;
    if (answer.counts !== "succeeded") this.progress.state.failed++;
    this.progress.state.completionTokens = this.tally.completionTokens;
    this.options.onAnswer?.(answer);
    this.emitter!.emit(seq, answer.line, answer.counts === "succeeded");
  }

  /** Stage 2: admits one line; resolves false when the run must stop reading. */
  async admit(line: InputLine, seen: Set<string>, answered: ReadonlySet<string>): Promise<boolean> {
    const { options, tally, progress } = this;
    tally.total++;
    const admission = admitLine(line, { backend: options.backend, answered, seen });
    if (admission.kind === "resumed") {
      tally.resumed++;
      tally.succeeded++;
      progress.state.done++;
      return true;
    }
    if (admission.kind === "invalid") {
      const onInvalid = options.onInvalid ?? "error-line";
      if (onInvalid === "skip") {
        tally.skipped++;
        progress.log(`skipped ${admission.error.message}`);
        return true;
      }
      if (onInvalid === "abort") {
        this.fail(
          `stopped at the first invalid line (onInvalid "abort"): ${admission.error.message}`,
        );
        return false;
      }
    }
    await this.slots.acquire();
    if (this.stopper.reason === "failed") return false;
    if (options.validateOnly) {
      if (admission.kind === "invalid") {
        tally.failed++;
        if (tally.failed <= 1000) progress.log(admission.error.message);
      }
      this.slots.release();
      return true;
    }
    const seq = this.#nextSeq++;
    if (admission.kind === "invalid") {
      this.record(seq, invalidAnswer(admission.error));
    } else {
      this.dispatch(seq, admission.request);
    }
    return true;
  }

  /** Stage 3: runs a request (or answers it batch_cancelled/expired once the run stopped). */
  dispatch(seq: number, request: BatchRequest): void {
    const stop = this.stopper.reason;
    if (stop === "cancelled" || stop === "expired") {
      const cancelled = stop === "cancelled";
      return this.record(
        seq,
        failureAnswer(
          request.customId,
          cancelled ? "batch_cancelled" : "batch_expired",
          `line ${request.lineNo}: the batch was ${
            cancelled ? "cancelled" : "past its deadline"
          } before this request ran`,
        ),
      );
    }
    this.endpoint ||= request.url;
    const controller = new AbortController();
    const { inFlight } = this.stopper;
    inFlight.add(controller);
    const timeoutMs = this.options.requestTimeoutMs;
    const task = executeRequest(this.options.backend, request, controller, timeoutMs).then(
      (outcome) => {
        inFlight.delete(controller);
        if (outcome.kind === "error" && outcome.error instanceof EngineFailure) {
          // The engine cannot go on: stop, and write no line, so --resume runs this request.
          this.fail(outcome.error.message);
          return this.emitter!.skip(seq);
        }
        this.record(seq, answerFor(request, outcome, timeoutMs));
      },
    );
    this.tasks.add(task);
    task.finally(() => this.tasks.delete(task));
  }

  /** Waits until every dispatched request has been answered. */
  async drain(): Promise<void> {
    while (this.tasks.size > 0) await Promise.all([...this.tasks]);
  }
}

/** Stage 5: puts the outputs in place (or keeps them for resume) and builds the summary. */
async function finish(
  run: _Run,
  sinks: Sinks | null,
  startedMs: number,
): Promise<BatchSummary> {
  const { options, tally } = run;
  let outputPath = "";
  let errorPath: string | undefined;
  let stop = run.stopper.reason;
  let fatal = run.fatal;
  if (sinks !== null) {
    const { sink, errSink } = sinks;
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
  const { promptTokens, completionTokens, ...counts } = tally;
  const summary: BatchSummary = {
    id: `batch_${crypto.randomUUID().replaceAll("-", "")}`,
    status,
    ...counts,
    promptTokens,
    completionTokens,
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
      JSON.stringify(batchObject(summary, run.endpoint, options.input), null, 2) + "\n",
    );
  }
  return summary;
}

/**
 * Runs a batch file through a backend and writes one answer per request.
 * Never throws for a bad line; throws {@linkcode OutputError} /
 * {@linkcode InputError} only when the run cannot start (output exists, input
 * missing), before any file is written. Input failures mid-run,
 * `onInvalid: "abort"` and failed uploads end with status "failed" and the
 * partial output kept for `resume`.
 *
 * @example
 * ```ts
 * import { ApiBackend } from "../api/backend.ts";
 * import { Engine } from "../engine/engine.ts";
 * await using engine = await Engine.load("models/ernie-tiny");
 * const summary = await runBatch({
 *   input: "examples/input.jsonl",
 *   output: await Deno.makeTempFile({ suffix: ".jsonl" }),
 *   backend: new ApiBackend(engine),
 *   overwrite: true,
 * });
 * console.log(formatSummary(summary));
 * ```
 */
export async function runBatch(options: RunBatchOptions): Promise<BatchSummary> {
  const startedMs = Date.now();
  await preflightBatch(options);
  // A library caller sees no output unless it asks for progress.
  const progress = createProgress(options.progress ?? { quiet: true });
  const timers: ReturnType<typeof setTimeout>[] = [];
  let sinks: Sinks | null = null;
  let run: _Run | undefined;
  const graceMs = options.cancelGraceMs ?? 3000;
  const onCancel = () => {
    if (run === undefined || run.stopper.reason !== null) return;
    run.stopper.halt("cancelled");
    progress.log(`cancelling: waiting ${graceMs} ms for in-flight requests`);
    timers.push(setTimeout(() => run!.stopper.halt("cancelled", "cancelled"), graceMs));
  };
  const { shard } = options;
  if (shard !== undefined && !(shard.count >= 1 && shard.index >= 0 && shard.index < shard.count)) {
    throw new RangeError(`shard ${shard.index}/${shard.count}: need 0 ≤ index < count`);
  }
  const counting = options.progress?.quiet
    ? Promise.resolve()
    : countLocalLines(options.input, (i) => inShard(shard, i))
      .then((n) => {
        if (n !== undefined) progress.state.total ??= n;
      }, () => {});
  try {
    sinks = await openSinks(options);
    const slots = new Slots(Math.max(1, options.maxInFlight ?? 1024));
    const emitter = sinks === null ? null : new Emitter({
      ...sinks,
      slots,
      order: options.order ?? "completion",
      onWriteError: (e) => run!.fail(`Cannot write the output: ${(e as Error).message}`, true),
    });
    run = new _Run(options, progress, slots, emitter);
    if (options.signal?.aborted) onCancel();
    options.signal?.addEventListener("abort", onCancel, { once: true });
    if (options.deadlineMs !== undefined) {
      const r = run;
      timers.push(setTimeout(() => r.stopper.halt("expired", "expired"), options.deadlineMs));
    }
    const seen = new Set<string>();
    const answered = sinks?.sink.answered ?? new Set<string>();
    try {
      const lines = readLines(options.input, {
        stdin: options.stdin,
        maxLineBytes: options.maxLineBytes,
        idleTimeoutMs: options.inputIdleTimeoutMs,
      });
      for await (const line of lines) {
        if (!inShard(shard, line.lineNo - 1)) continue;
        if (!(await run.admit(line, seen, answered))) break;
      }
    } catch (e) {
      run.fail((e as Error).message);
    }
    await run.drain();
    progress.state.total = run.tally.total;
    return await finish(run, sinks, startedMs);
  } catch (e) {
    // Could not start (or an internal failure): keep what was written.
    await sinks?.sink.keep().catch(() => {});
    await sinks?.errSink?.keep().catch(() => {});
    throw e;
  } finally {
    options.signal?.removeEventListener("abort", onCancel);
    for (const t of timers) clearTimeout(t);
    await counting;
    progress.stop();
  }
}
