/**
 * The types shared by the engine's parts: what a request asks for, what a
 * sequence carries through the scheduler, and what comes back.
 *
 * @module
 */

/**
 * Per-request sampling options, already validated and filled with defaults.
 *
 * @example
 * ```ts
 * import { Engine } from "./engine.ts";
 *
 * await using engine = await Engine.load("models/ernie-tiny");
 * const sampling: SamplingParams = {
 *   ...DEFAULT_SAMPLING,
 *   temperature: 0.7,
 *   seed: 1,
 *   maxTokens: 4,
 * };
 * const result = await engine.generate({ id: "a", promptIds: [5, 6, 7], sampling });
 * console.log(result.tokenIds.length <= sampling.maxTokens);
 * ```
 */
export interface SamplingParams {
  /** 0 means greedy (argmax). */
  readonly temperature: number;
  /** 1 disables nucleus sampling. */
  readonly topP: number;
  /** 0 (or ≥ vocab) disables top-k. */
  readonly topK: number;
  /** 0 disables min-p. */
  readonly minP: number;
  /** Random seed; the engine draws one when a request gives none. */
  readonly seed?: number;
  /** Most tokens to generate (already capped by the context length). */
  readonly maxTokens: number;
  /** End-of-sequence ids are ignored until this many tokens were generated. */
  readonly minTokens: number;
  /** Stop strings: generation ends when the text contains one; it is cut from the text. */
  readonly stop: readonly string[];
  /** Extra token ids that end generation (the model's eos ids are added by the engine). */
  readonly stopTokenIds: readonly number[];
  /** Keep generating past end-of-sequence ids. */
  readonly ignoreEos: boolean;
  readonly presencePenalty: number;
  readonly frequencyPenalty: number;
  /** 1 disables it. Applied over prompt and output tokens, as vLLM does. */
  readonly repetitionPenalty: number;
  /** token id → bias added to its logit. */
  readonly logitBias: ReadonlyMap<number, number>;
  /** Return the chosen token's log-probability. */
  readonly logprobs: boolean;
  /** How many alternatives to return with each chosen token (0..20). */
  readonly topLogprobs: number;
  /** Constrain the answer to JSON (absent: free text). See engine/grammar.ts. */
  readonly responseFormat?: ResponseFormat;
}

/** What a request asks the answer to be: any JSON object, or a document matching a JSON schema. */
export type ResponseFormat =
  | { readonly type: "json_object" }
  | { readonly type: "json_schema"; readonly schema: unknown };

/**
 * Defaults a request starts from before generation_config.json and the body apply.
 *
 * @example
 * ```ts
 * const greedy: SamplingParams = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 8 };
 * console.log(DEFAULT_SAMPLING.maxTokens, greedy.topP); // 16 1
 * ```
 */
export const DEFAULT_SAMPLING: SamplingParams = Object.freeze({
  temperature: 1,
  topP: 1,
  topK: 0,
  minP: 0,
  maxTokens: 16,
  minTokens: 0,
  stop: [],
  stopTokenIds: [],
  ignoreEos: false,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repetitionPenalty: 1,
  logitBias: new Map(),
  logprobs: false,
  topLogprobs: 0,
});

/**
 * What the engine is asked to do for one sequence.
 *
 * @example
 * ```ts
 * import { Engine } from "./engine.ts";
 *
 * await using engine = await Engine.load("models/ernie-tiny");
 * const request: GenerateRequest = {
 *   id: "greeting",
 *   promptIds: engine.tokenizer.encode("Hello"),
 *   sampling: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 4 },
 * };
 * console.log((await engine.generate(request)).text);
 * ```
 */
export interface GenerateRequest {
  /** Unique within the engine. */
  readonly id: string;
  readonly promptIds: readonly number[];
  readonly sampling: SamplingParams;
}

/** One alternative token with its log-probability. */
export interface TokenLogprob {
  readonly tokenId: number;
  readonly logprob: number;
}

/** The chosen token's log-probability and the top alternatives at that step. */
export interface StepLogprobs {
  readonly tokenId: number;
  readonly logprob: number;
  readonly top: readonly TokenLogprob[];
}

export type FinishReason = "stop" | "length";

/**
 * What the engine gives back for one finished sequence.
 *
 * @example
 * ```ts
 * import { Engine } from "./engine.ts";
 *
 * await using engine = await Engine.load("models/ernie-tiny");
 * const sampling = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 4, logprobs: true };
 * const request = { id: "a", promptIds: [5, 6, 7], sampling };
 * const result: GenerateResult = await engine.generate(request);
 * console.log(result.finishReason, result.tokenIds.length === result.logprobs?.length);
 * ```
 */
export interface GenerateResult {
  readonly id: string;
  /**
   * Generated ids, with the end-of-sequence or stop id that ended generation
   * (as vLLM's `token_ids`: it is counted in `completion_tokens` and has a
   * logprobs entry, but is not in the text), and with the tokens of a stop
   * string kept.
   */
  readonly tokenIds: readonly number[];
  /** Decoded text with the stop string (and what followed it) removed. */
  readonly text: string;
  readonly finishReason: FinishReason;
  readonly promptTokens: number;
  /** Prompt tokens served from the prefix cache. */
  readonly cachedTokens: number;
  /** One entry per generated token when logprobs were asked for. */
  readonly logprobs?: readonly StepLogprobs[];
}

/**
 * What the engine is asked for an embedding.
 *
 * @example
 * ```ts
 * import { Engine } from "./engine.ts";
 *
 * await using engine = await Engine.load("models/ernie-tiny");
 * const promptIds = engine.tokenizer.encode("batch inference");
 * const request: EmbedRequest = { id: "doc-1", promptIds };
 * const { embedding } = await engine.embed(request);
 * console.log(embedding.length === engine.hiddenSize);
 * ```
 */
export interface EmbedRequest {
  readonly id: string;
  readonly promptIds: readonly number[];
}

/**
 * A pooled embedding of one prompt (last token or mean, L2-normalised by default).
 *
 * @example
 * ```ts
 * import { Engine } from "./engine.ts";
 *
 * await using engine = await Engine.load("models/ernie-tiny");
 * const result: EmbedResult = await engine.embed({ id: "a", promptIds: [5, 6, 7] });
 * const norm = Math.hypot(...result.embedding);
 * console.log(result.promptTokens, norm.toFixed(3)); // 3 "1.000"
 * ```
 */
export interface EmbedResult {
  readonly id: string;
  readonly embedding: Float32Array;
  readonly promptTokens: number;
}

/**
 * The engine cannot go on: its compute backend failed (a GPU error, a lost
 * device). Every request in flight and every later one fails with it; a batch
 * run stops, keeps the answers written so far, and writes no line for these
 * requests, so that a resumed run computes them.
 */
export class EngineFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EngineFailure";
  }
}

/**
 * An error a request can get that is its own fault (HTTP 400-like).
 *
 * @example
 * ```ts
 * import { Batchwright } from "../api/batchwright.ts";
 *
 * await using llm = await Batchwright.load("models/ernie-tiny");
 * try {
 *   await llm.request("/v1/completions", { prompt: "Hi", max_tokens: -1 });
 * } catch (e) {
 *   if (!(e instanceof RequestError)) throw e;
 *   console.log(e.status, e.param, e.message); // 400 "max_tokens" ...
 * }
 * ```
 */
export class RequestError extends Error {
  constructor(
    message: string,
    readonly status = 400,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly type = "invalid_request_error",
  ) {
    super(message);
    this.name = "RequestError";
  }
}
