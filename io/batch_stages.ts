/**
 * The stages of a batch run, each readable and testable alone:
 * {@linkcode admitLine} turns an input line into a request or a line error,
 * {@linkcode executeRequest} runs one request to an {@linkcode Outcome},
 * {@linkcode answerFor} turns an outcome into the output line, the
 * {@linkcode Emitter} writes answers (in completion or input order) and frees
 * their slots, and the {@linkcode Stopper} decides when the run stops taking
 * work. `runBatch` (io/run_batch.ts) wires them together.
 *
 * @module
 */
import { RequestError } from "../engine/types.ts";
import {
  type BatchFailureCode,
  type BatchRequest,
  failureLine,
  httpErrorLine,
  type LineError,
  lineError,
  lineErrorLine,
  parseRequestLine,
  successLine,
} from "./batch_format.ts";
import type { InputLine } from "./reader.ts";
export type { BatchFailureCode, BatchRequest, LineError } from "./batch_format.ts";
export type { InputLine } from "./reader.ts";
import type { OutputSink } from "./writer.ts";

/**
 * What the run loop drives: the engine behind OpenAI-style endpoints.
 *
 * @example
 * ```ts
 * import { RequestError } from "../engine/types.ts";
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

/** What {@linkcode admitLine} makes of one input line. */
export type Admission =
  | { readonly kind: "request"; readonly request: BatchRequest }
  | { readonly kind: "invalid"; readonly error: LineError }
  /** Answered successfully by an earlier run (resume): not run again. */
  | { readonly kind: "resumed"; readonly customId: string };

/**
 * Parses and checks one line: JSON envelope, duplicate custom_id, supported
 * url, the backend's own validation. Records the custom_id in `seen`.
 *
 * @example
 * ```ts
 * const backend: BatchBackend = {
 *   urls: ["/v1/x"],
 *   validate() {},
 *   run: (_url, body) => Promise.resolve({ echo: body }),
 * };
 * const seen = new Set<string>();
 * const a = admitLine({ lineNo: 1, text: '{"custom_id":"a","method":"POST","url":"/v1/x","body":{}}' },
 *   { backend, answered: new Set(), seen });
 * a.kind; // "request", or "invalid" when backend.urls lacks "/v1/x"
 * ```
 */
export function admitLine(
  line: InputLine,
  ctx: { backend: BatchBackend; answered: ReadonlySet<string>; seen: Set<string> },
): Admission {
  if (line.error !== undefined) {
    return {
      kind: "invalid",
      error: { ...lineError(line.lineNo, null, "", null, "invalid_line"), message: line.error },
    };
  }
  const parsed = parseRequestLine(line.lineNo, line.text);
  if (!parsed.ok) return { kind: "invalid", error: parsed.error };
  const { customId, url, lineNo, body } = parsed.request;
  const { backend, seen } = ctx;
  const invalid = (message: string, param: string | null, code: string, status?: number) => ({
    kind: "invalid" as const,
    error: lineError(lineNo, customId, message, param, code, status),
  });
  if (seen.has(customId)) {
    return invalid(
      `field "custom_id": duplicate "${customId}" (an earlier line has it)`,
      "custom_id",
      "duplicate_custom_id",
    );
  }
  seen.add(customId);
  if (ctx.answered.has(customId)) return { kind: "resumed", customId };
  if (!backend.urls.includes(url)) {
    return invalid(
      `field "url": unsupported "${url}" (supported: ${backend.urls.join(", ")})`,
      "url",
      "unsupported_url",
    );
  }
  try {
    backend.validate(url, body);
  } catch (e) {
    if (!(e instanceof RequestError)) throw e;
    const param = e.param === null ? "body" : `body.${e.param}`;
    return invalid(`field "${param}": ${e.message}`, e.param, e.code ?? "invalid_field", e.status);
  }
  return { kind: "request", request: parsed.request };
}

/** How one request ended. `aborted` carries the abort reason: "timeout", "expired" or "cancelled". */
export type Outcome =
  | { readonly kind: "ok"; readonly value: unknown }
  | { readonly kind: "error"; readonly error: unknown }
  | { readonly kind: "aborted"; readonly reason: unknown };

/**
 * Runs one request on the backend, racing it against its abort signal (a
 * timeout aborts with "timeout"; the caller aborts with "expired" or
 * "cancelled"). `controller` stays registered with the caller while it runs.
 *
 * @example
 * ```ts
 * const backend: BatchBackend = {
 *   urls: ["/v1/x"],
 *   validate() {},
 *   run: (_url, body) => Promise.resolve({ echo: body }),
 * };
 * const request = { lineNo: 1, customId: "a", method: "POST" as const, url: "/v1/x", body: {} };
 * const outcome = await executeRequest(backend, request, new AbortController(), 30_000);
 * if (outcome.kind === "aborted") console.log(outcome.reason); // "timeout"
 * ```
 */
export async function executeRequest(
  backend: BatchBackend,
  request: BatchRequest,
  controller: AbortController,
  timeoutMs?: number,
): Promise<Outcome> {
  const timer = timeoutMs === undefined
    ? undefined
    : setTimeout(() => controller.abort("timeout"), timeoutMs);
  const aborted = new Promise<Outcome>((resolve) =>
    controller.signal.addEventListener(
      "abort",
      () => resolve({ kind: "aborted", reason: controller.signal.reason }),
    )
  );
  const { customId, url, body } = request;
  const running = backend.run(url, body, { customId, signal: controller.signal }).then(
    (value): Outcome => ({ kind: "ok", value }),
    (error: unknown): Outcome =>
      controller.signal.aborted
        ? { kind: "aborted", reason: controller.signal.reason }
        : { kind: "error", error },
  );
  try {
    return await Promise.race([running, aborted]);
  } finally {
    clearTimeout(timer);
  }
}

/** An output line and how it counts in the summary. */
export interface Answer {
  /** The output line (no newline). */
  readonly line: string;
  /** The request's custom_id (null for a line that had none). */
  readonly customId: string | null;
  /** Which summary count it adds to. */
  readonly counts: "succeeded" | "failed" | "cancelled";
  /** The error code (`invalid_json`, `request_timeout`, ...); null for a success. */
  readonly code: string | null;
  /** The response's token usage (successes only). */
  readonly promptTokens: number;
  /** The response's completion tokens (successes only). */
  readonly completionTokens: number;
}

const _num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : 0);

/**
 * The answer for a request that never got an HTTP response:
 * request_timeout counts as failed, batch_cancelled and batch_expired as cancelled.
 */
export function failureAnswer(customId: string, code: BatchFailureCode, why: string): Answer {
  return {
    line: failureLine(customId, code, why),
    customId,
    counts: code === "request_timeout" ? "failed" : "cancelled",
    code,
    promptTokens: 0,
    completionTokens: 0,
  };
}

/**
 * The output line for a request's outcome.
 *
 * @example
 * ```ts
 * const request = { lineNo: 1, customId: "a", method: "POST" as const, url: "/v1/x", body: {} };
 * answerFor(request, { kind: "aborted", reason: "timeout" }, 5000).line;
 * // {"id":"batch_req_…","custom_id":"a","response":null,"error":{"code":"request_timeout",…}}
 * ```
 */
export function answerFor(request: BatchRequest, outcome: Outcome, timeoutMs?: number): Answer {
  const { customId, lineNo } = request;
  if (outcome.kind === "aborted") {
    if (outcome.reason === "timeout") {
      return failureAnswer(
        customId,
        "request_timeout",
        `line ${lineNo}: request timed out after ${timeoutMs} ms`,
      );
    }
    if (outcome.reason === "expired") {
      return failureAnswer(
        customId,
        "batch_expired",
        `line ${lineNo}: the batch deadline passed before this request finished`,
      );
    }
    return failureAnswer(
      customId,
      "batch_cancelled",
      `line ${lineNo}: the batch was cancelled before this request finished`,
    );
  }
  if (outcome.kind === "error") {
    const e = outcome.error;
    const body = e instanceof RequestError
      ? { message: `line ${lineNo}: ${e.message}`, type: e.type, param: e.param, code: e.code }
      : {
        message: `line ${lineNo}: internal error: ${(e as Error)?.message ?? String(e)}`,
        type: "server_error",
        param: null,
        code: "internal_error",
      };
    const status = e instanceof RequestError ? e.status : 500;
    return {
      line: httpErrorLine(customId, status, body),
      customId,
      counts: "failed",
      code: body.code ?? "error",
      promptTokens: 0,
      completionTokens: 0,
    };
  }
  const usage = (outcome.value as { usage?: Record<string, unknown> } | null)?.usage;
  return {
    line: successLine(customId, outcome.value),
    customId,
    counts: "succeeded",
    code: null,
    promptTokens: _num(usage?.prompt_tokens),
    completionTokens: _num(usage?.completion_tokens),
  };
}

/** The answer for an input line that could not become a request. */
export function invalidAnswer(error: LineError): Answer {
  return {
    line: lineErrorLine(error),
    customId: error.customId,
    counts: "failed",
    code: error.code,
    promptTokens: 0,
    completionTokens: 0,
  };
}

/** A counting semaphore whose permits are held from dispatch until the answer is written. */
export class Slots {
  #free: number;
  #waiting: (() => void)[] = [];
  /** `size` permits, all free. */
  constructor(size: number) {
    this.#free = size;
  }
  /** Resolves once a permit is taken (waiters are served first come, first served). */
  acquire(): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#waiting.push(resolve));
  }
  /** Returns a permit, to the longest waiter if any. */
  release(): void {
    const next = this.#waiting.shift();
    if (next) next();
    else this.#free++;
  }
}

/**
 * Writes answers to the output (failures to the error file when there is
 * one), now or once every earlier `seq` is written (input order), and frees
 * each answer's slot once its line reached the file.
 *
 * @example
 * ```ts ignore
 * const emitter = new Emitter({ sink, errSink: null, slots, order: "input", onWriteError: console.error });
 * emitter.emit(1, line1, true); // held: seq 0 is not written yet
 * emitter.emit(0, line0, true); // writes line0, then line1
 * ```
 */
export class Emitter {
  /** Answers waiting for earlier ones (input order); null: skipped, nothing to write. */
  readonly #ready = new Map<number, { line: string; ok: boolean } | null>();
  #nextToWrite = 0;

  /** Writes to `sink` (failures to `errSink` when given) and frees `slots` as lines land. */
  constructor(
    private readonly to: {
      readonly sink: OutputSink;
      readonly errSink: OutputSink | null;
      readonly slots: Slots;
      readonly order: "completion" | "input";
      readonly onWriteError: (e: unknown) => void;
    },
  ) {}

  /** Records the answer numbered `seq` (numbers run from 0 without gaps). */
  emit(seq: number, line: string, ok: boolean): void {
    if (this.to.order === "completion") return this.#write(line, ok);
    this.#ready.set(seq, { line, ok });
    this.#drain();
  }

  /**
   * Writes nothing for the answer numbered `seq` (the run failed under it, so
   * a resumed run computes it) but frees its slot and lets later answers out.
   */
  skip(seq: number): void {
    if (this.to.order === "completion") return this.to.slots.release();
    this.#ready.set(seq, null);
    this.#drain();
  }

  #drain(): void {
    while (this.#ready.has(this.#nextToWrite)) {
      const r = this.#ready.get(this.#nextToWrite)!;
      this.#ready.delete(this.#nextToWrite++);
      if (r === null) this.to.slots.release();
      else this.#write(r.line, r.ok);
    }
  }

  #write(line: string, ok: boolean): void {
    const target = ok || this.to.errSink === null ? this.to.sink : this.to.errSink;
    target.write(line).then(() => this.to.slots.release(), (e) => {
      this.to.onWriteError(e);
      this.to.slots.release();
    });
  }
}

/** Why the run stopped taking work. */
export type StopReason = "cancelled" | "expired" | "failed";

/**
 * The run's stop state: the first reason wins; `cancelled` and `expired` may
 * also abort the requests in flight (their controllers are registered here).
 */
export class Stopper {
  #reason: StopReason | null = null;
  /** Controllers of the requests now running. */
  readonly inFlight: Set<AbortController> = new Set();

  /** The first reason given to {@linkcode Stopper.halt}, or null while the run goes on. */
  get reason(): StopReason | null {
    return this.#reason;
  }

  /** Stops taking work for `reason` (the first one sticks); aborts in-flight requests when asked. */
  halt(reason: StopReason, abortInFlightWith?: "cancelled" | "expired"): void {
    this.#reason ??= reason;
    if (abortInFlightWith) { for (const c of this.inFlight) c.abort(abortInFlightWith); }
  }
}
