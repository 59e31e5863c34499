/**
 * The OpenAI endpoints over an engine, in the shape the batch loop drives
 * (`BatchBackend` of io/run_batch.ts, matched structurally).
 *
 * @module
 */

import { basename, resolve } from "node:path";
import { RequestError } from "../engine/types.ts";
import { ModelTokenizer } from "../engine/loader/tokenizer.ts";
import { loadGenerationConfig, loadModelConfig } from "../engine/loader/config.ts";
import type { EndpointContext, EngineLike } from "./common.ts";
import { runChat, validateChat } from "./chat.ts";
import { runCompletion, validateCompletion } from "./completions.ts";
import { runEmbedding, validateEmbedding } from "./embeddings.ts";

interface Endpoint {
  validate(body: unknown, engine: EngineLike): unknown;
  run(engine: EngineLike, body: unknown, ctx: EndpointContext): Promise<unknown>;
}

const ENDPOINTS: ReadonlyMap<string, Endpoint> = new Map<string, Endpoint>([
  ["/v1/chat/completions", { validate: validateChat, run: runChat }],
  ["/v1/completions", { validate: validateCompletion, run: runCompletion }],
  ["/v1/embeddings", { validate: validateEmbedding, run: runEmbedding }],
]);

/** Options of {@linkcode ApiBackend}. */
export interface ApiBackendOptions {
  /** Prefix of engine request ids (default: a random one per backend). */
  readonly idPrefix?: string;
  /** Cap a max_tokens that does not fit the context instead of answering 400 (default false). */
  readonly truncateMaxTokens?: boolean;
}

/**
 * Serves `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings` on an
 * engine. 4xx problems reject with {@linkcode RequestError}.
 *
 * @example
 * ```ts
 * import { ApiBackend } from "./backend.ts";
 * import { Engine } from "../engine/engine.ts";
 * await using engine = await Engine.load("models/ernie-tiny");
 * const backend = new ApiBackend(engine);
 * const body = await backend.run("/v1/chat/completions", {
 *   messages: [{ role: "user", content: "hi" }],
 * }, { customId: "req-1", signal: new AbortController().signal });
 * ```
 */
export class ApiBackend {
  /** The URLs served. */
  readonly urls: readonly string[] = [...ENDPOINTS.keys()];
  readonly #engine: EngineLike;
  readonly #prefix: string;
  readonly #truncate: boolean;
  #next = 0;

  /** Serves requests on `engine`; engine request ids are `<idPrefix>-<counter>[-...]`. */
  constructor(engine: EngineLike, options: ApiBackendOptions = {}) {
    this.#engine = engine;
    this.#prefix = options.idPrefix ?? `req-${crypto.randomUUID().slice(0, 8)}`;
    this.#truncate = options.truncateMaxTokens ?? false;
  }

  /**
   * A backend for `--validate-only`: reads the model directory's config and
   * tokenizer, touches no GPU, and refuses to run requests. The served name
   * defaults to the directory's name, as the engine's does.
   *
   * @example
   * ```ts
   * import { ApiBackend } from "./backend.ts";
   * const backend = await ApiBackend.forValidation("models/ernie-tiny");
   * backend.validate("/v1/chat/completions", { messages: [{ role: "user", content: "hi" }] });
   * ```
   */
  static async forValidation(
    dir: string,
    servedModelName?: string,
    options: { maxModelLen?: number } = {},
  ): Promise<ApiBackend> {
    const [config, generationDefaults, tokenizer] = await Promise.all([
      loadModelConfig(dir),
      loadGenerationConfig(dir),
      ModelTokenizer.load(dir),
    ]);
    const refuse = () =>
      Promise.reject(new Error("This backend only validates requests (--validate-only)"));
    return new ApiBackend({
      modelName: servedModelName ?? basename(resolve(dir)),
      maxModelLen: options.maxModelLen ?? config.maxPositionEmbeddings,
      hiddenSize: config.hiddenSize,
      tokenizer,
      generationDefaults,
      generate: refuse,
      embed: refuse,
    });
  }

  /** Checks a body without tokenizing or running it; throws {@linkcode RequestError}. */
  validate(url: string, body: unknown): void {
    this.#endpoint(url).validate(body, this.#engine);
  }

  /** Runs one request; resolves to the response body. */
  async run(
    url: string,
    body: unknown,
    ctx: { customId: string; signal: AbortSignal },
  ): Promise<unknown> {
    const endpoint = this.#endpoint(url);
    const requestId = `${this.#prefix}-${this.#next++}`;
    return await endpoint.run(this.#engine, body, {
      requestId,
      signal: ctx.signal,
      truncateMaxTokens: this.#truncate,
    });
  }

  #endpoint(url: string): Endpoint {
    const endpoint = ENDPOINTS.get(url);
    if (endpoint === undefined) {
      throw new RequestError(
        `URL "${url}" is not supported: use one of ${this.urls.join(", ")}`,
        400,
        "url",
        "unsupported_url",
      );
    }
    return endpoint;
  }
}
