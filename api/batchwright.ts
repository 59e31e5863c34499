/**
 * The library in one class: load a model (a directory or a hub id), answer
 * OpenAI-style requests one at a time or a stream of batch lines, close.
 * Nothing here prints, exits the process or keeps global state: progress
 * goes to a callback, cancellation comes through an `AbortSignal`, and
 * `close()` (or `await using`) releases the model's memory.
 *
 * @module
 */
import { basename, join } from "node:path";
import { Engine, type EngineOptions, type LoadProgress } from "../engine/engine.ts";
import { downloadModel, type DownloadProgress, parseModelRef } from "../engine/loader/hub.ts";
import { ApiBackend } from "./backend.ts";
import { admitLine, answerFor, executeRequest, invalidAnswer } from "../io/batch_stages.ts";

/**
 * What {@linkcode Batchwright.load} reports while it works.
 *
 * @example
 * ```ts
 * const onProgress = (p: BatchwrightProgress) => {
 *   if (p.stage === "download") console.log(`${p.file}: ${p.received} bytes`);
 *   else if (p.done === p.total) console.log(`${p.total} weight tensors read`);
 * };
 * await using llm = await Batchwright.load("models/ernie-tiny", { onProgress });
 * console.log(llm.modelName);
 * ```
 */
export type BatchwrightProgress =
  | ({ readonly stage: "download" } & DownloadProgress)
  | LoadProgress;

/**
 * Options of {@linkcode Batchwright.load}: the engine's, plus where hub models go.
 *
 * @example
 * ```ts
 * const options: BatchwrightOptions = {
 *   maxNumSeqs: 8,
 *   servedModelName: "ernie",
 *   truncateMaxTokens: true,
 *   hub: { offline: true },
 * };
 * await using llm = await Batchwright.load("models/ernie-tiny", options);
 * console.log(llm.modelName); // "ernie"
 * ```
 */
export interface BatchwrightOptions extends Omit<EngineOptions, "onProgress"> {
  /**
   * Where a hub model is cached (default `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
   * `~/.cache/huggingface/hub`), the hub's address and token (default `$HF_ENDPOINT`,
   * `$HF_TOKEN`).
   */
  readonly hub?: {
    readonly cacheDir?: string;
    readonly endpoint?: string;
    readonly token?: string;
    readonly offline?: boolean;
  };
  /** Download and load progress (nothing is printed). */
  readonly onProgress?: (progress: BatchwrightProgress) => void;
  /** Cancels a download or load in progress. */
  readonly signal?: AbortSignal;
  /** Cap a max_tokens that does not fit the context instead of answering 400 (default false). */
  readonly truncateMaxTokens?: boolean;
}

/**
 * The endpoints {@linkcode Batchwright.request} serves.
 *
 * @example
 * ```ts
 * await using llm = await Batchwright.load("models/ernie-tiny");
 * const url: Endpoint = "/v1/completions";
 * const body = { prompt: "Once upon a time", max_tokens: 4, temperature: 0 };
 * const out = await llm.request(url, body) as { choices: { text: string }[] };
 * console.log(out.choices[0]!.text);
 * ```
 */
export type Endpoint = "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings";

/**
 * One answer line of {@linkcode Batchwright.batch}, exactly as run-batch writes it.
 *
 * @example
 * ```ts
 * await using llm = await Batchwright.load("models/ernie-tiny");
 * const lines = [
 *   { custom_id: "ok", method: "POST", url: "/v1/embeddings", body: { input: "hi" } },
 *   { custom_id: "bad", method: "POST", url: "/v1/nowhere", body: {} },
 * ];
 * const answers: BatchAnswer[] = [];
 * for await (const answer of llm.batch(lines)) answers.push(answer);
 * for (const a of answers) console.log(a.custom_id, a.response?.status_code ?? a.error?.code);
 * ```
 */
export interface BatchAnswer {
  readonly id: string;
  readonly custom_id: string | null;
  readonly response: { status_code: number; request_id: string; body: unknown } | null;
  readonly error: { code: string; message: string } | null;
}

/**
 * Options of {@linkcode Batchwright.batch}.
 *
 * @example
 * ```ts
 * await using llm = await Batchwright.load("models/ernie-tiny");
 * const lines = ["x", "y", "z"].map((id) =>
 *   JSON.stringify({
 *     custom_id: id,
 *     method: "POST",
 *     url: "/v1/completions",
 *     body: { prompt: id, max_tokens: 2 },
 *   })
 * );
 * const options: BatchOptions = { maxInFlight: 2, requestTimeoutMs: 60_000 };
 * for await (const answer of llm.batch(lines, options)) {
 *   console.log(answer.custom_id, answer.response?.status_code);
 * }
 * ```
 */
export interface BatchOptions {
  /** Requests running at once (default 256); answers come back as they finish. */
  readonly maxInFlight?: number;
  /** Per-request time limit in milliseconds (default none). */
  readonly requestTimeoutMs?: number;
  /** Stops the batch: running requests end with `batch_cancelled` answers. */
  readonly signal?: AbortSignal;
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined; // no --allow-env: the defaults below do without
  }
}

/**
 * A loaded model answering OpenAI-style requests.
 *
 * @example
 * ```ts
 * import { Batchwright } from "./batchwright.ts";
 *
 * await using llm = await Batchwright.load("models/ernie-tiny");
 * const reply = await llm.request("/v1/chat/completions", {
 *   messages: [{ role: "user", content: "Hello" }],
 *   max_tokens: 4,
 *   temperature: 0,
 * }) as { choices: { message: { content: string } }[] };
 * console.log(reply.choices[0]!.message.content);
 * ```
 */
export class Batchwright implements AsyncDisposable {
  readonly #engine: Engine;
  readonly #api: ApiBackend;
  #closed = false;

  private constructor(engine: Engine, api: ApiBackend) {
    this.#engine = engine;
    this.#api = api;
  }

  /**
   * Loads a model directory, or a hub id (`owner/name[@revision]`) downloaded into
   * the Hugging Face cache first.
   *
   * @example
   * ```ts
   * import { Batchwright } from "./batchwright.ts";
   * const events: string[] = [];
   * const llm = await Batchwright.load("models/ernie-tiny", {
   *   maxNumSeqs: 8,
   *   onProgress: (p) => events.push(p.stage),
   * });
   * console.log(llm.modelName, events.length > 0);
   * await llm.close();
   * ```
   */
  static async load(model: string, options: BatchwrightOptions = {}): Promise<Batchwright> {
    const { hub, onProgress, signal, truncateMaxTokens, ...engineOptions } = options;
    let dir = model;
    let servedModelName = engineOptions.servedModelName;
    if (!(await Deno.stat(model).catch(() => null))?.isDirectory) {
      const ref = parseModelRef(model);
      if (ref === null) {
        throw new Error(`Model "${model}" is neither a directory nor a hub id like owner/name`);
      }
      const home = env("HF_HOME") ??
        join(env("XDG_CACHE_HOME") ?? join(env("HOME") ?? ".", ".cache"), "huggingface");
      dir = await downloadModel(ref, {
        cacheDir: hub?.cacheDir ?? env("HF_HUB_CACHE") ?? join(home, "hub"),
        endpoint: hub?.endpoint ?? env("HF_ENDPOINT"),
        token: hub?.token ?? env("HF_TOKEN"),
        offline: hub?.offline ?? env("HF_HUB_OFFLINE") === "1",
        weights: true,
        signal,
        onProgress: onProgress && ((p) => onProgress({ stage: "download", ...p })),
      });
      servedModelName ??= ref.repo;
    }
    signal?.throwIfAborted();
    const engine = await Engine.load(dir, {
      ...engineOptions,
      servedModelName: servedModelName ?? basename(dir),
      onProgress,
    });
    return new Batchwright(engine, new ApiBackend(engine, { truncateMaxTokens }));
  }

  /** The name requests' `model` field must match (when they give one). */
  get modelName(): string {
    return this.#engine.modelName;
  }

  /** The engine underneath, for token-level use (`generate`, `embed`) and statistics. */
  get engine(): Engine {
    return this.#engine;
  }

  /**
   * Answers one request body; resolves to the response body. A request's own
   * mistake rejects with a `RequestError` (status 4xx, naming the field).
   *
   * @example
   * ```ts
   * import { Batchwright } from "./batchwright.ts";
   * await using llm = await Batchwright.load("models/ernie-tiny");
   * const out = await llm.request("/v1/embeddings", { input: "hello" }) as {
   *   data: { embedding: number[] }[];
   * };
   * console.log(out.data[0]!.embedding.length);
   * ```
   */
  request(url: Endpoint, body: unknown, options: { signal?: AbortSignal } = {}): Promise<unknown> {
    if (this.#closed) return Promise.reject(new Error("Batchwright is closed"));
    this.#api.validate(url, body);
    return this.#api.run(url, body, {
      customId: "request",
      signal: options.signal ?? new AbortController().signal,
    });
  }

  /**
   * Runs a stream of batch lines (JSONL text lines, or already-parsed objects in
   * the `{custom_id, method, url, body}` shape) and yields one answer per line as
   * it finishes. A bad line yields its error answer; it never stops the others.
   *
   * @example
   * ```ts
   * import { Batchwright } from "./batchwright.ts";
   * await using llm = await Batchwright.load("models/ernie-tiny");
   * const lines = ["a", "b"].map((id) => ({
   *   custom_id: id,
   *   method: "POST",
   *   url: "/v1/completions",
   *   body: { prompt: `Say ${id}`, max_tokens: 3, temperature: 0 },
   * }));
   * for await (const answer of llm.batch(lines)) {
   *   console.log(answer.custom_id, answer.response?.status_code);
   * }
   * ```
   */
  async *batch(
    lines: Iterable<string | object> | AsyncIterable<string | object>,
    options: BatchOptions = {},
  ): AsyncGenerator<BatchAnswer> {
    if (this.#closed) throw new Error("Batchwright is closed");
    const limit = Math.max(1, options.maxInFlight ?? 256);
    const seen = new Set<string>();
    const answered = new Set<string>();
    const controllers = new Set<AbortController>();
    const running = new Map<number, Promise<{ key: number; line: string }>>();
    const cancelAll = () => controllers.forEach((c) => c.abort("cancelled"));
    options.signal?.addEventListener("abort", cancelAll, { once: true });
    let key = 0;
    let lineNo = 0;
    try {
      for await (const item of lines) {
        lineNo++;
        if (options.signal?.aborted) break;
        const text = typeof item === "string" ? item : JSON.stringify(item);
        if (text.trim() === "") continue;
        const admission = admitLine({ lineNo, text }, { backend: this.#api, answered, seen });
        const k = key++;
        if (admission.kind !== "request") {
          if (admission.kind === "invalid") yield JSON.parse(invalidAnswer(admission.error).line);
          continue;
        }
        const controller = new AbortController();
        controllers.add(controller);
        const request = admission.request;
        running.set(
          k,
          executeRequest(this.#api, request, controller, options.requestTimeoutMs).then(
            (outcome) => {
              controllers.delete(controller);
              return { key: k, line: answerFor(request, outcome, options.requestTimeoutMs).line };
            },
          ),
        );
        while (running.size >= limit) yield await this.#next(running);
      }
      while (running.size > 0) yield await this.#next(running);
    } finally {
      options.signal?.removeEventListener("abort", cancelAll);
      cancelAll(); // a consumer that stops early cancels what is still running
    }
  }

  async #next(
    running: Map<number, Promise<{ key: number; line: string }>>,
  ): Promise<BatchAnswer> {
    const done = await Promise.race(running.values());
    running.delete(done.key);
    return JSON.parse(done.line);
  }

  /** Waits for running requests, then releases the model (GPU buffers or worker threads). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#engine.close();
  }

  /** `await using llm = await Batchwright.load(...)` closes it at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
