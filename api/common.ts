/**
 * What the three endpoints share: the engine they run on, body validation with
 * errors that name the field, the sampling fields common to chat and
 * completions, and turning them into {@linkcode SamplingParams}.
 *
 * @module
 */

import { z } from "zod";
import {
  type EmbedRequest,
  type EmbedResult,
  type GenerateRequest,
  type GenerateResult,
  RequestError,
  type ResponseFormat,
  type SamplingParams,
} from "../engine/types.ts";
import type { ModelTokenizer } from "../engine/loader/tokenizer.ts";
import type { GenerationConfig } from "../engine/loader/config.ts";
import { deriveSeed } from "../engine/rng.ts";

/** Sampling defaults from `generation_config.json` (absent fields fall back to OpenAI's). */
export type GenerationDefaults = GenerationConfig;

/** The engine the endpoints run on (the GPU engine implements it; tests fake it). */
export interface EngineLike {
  /** The served model name: a request's `model`, when given, must equal it. */
  readonly modelName: string;
  readonly maxModelLen: number;
  readonly hiddenSize: number;
  readonly tokenizer: ModelTokenizer;
  readonly generationDefaults: GenerationDefaults;
  generate(req: GenerateRequest, signal?: AbortSignal): Promise<GenerateResult>;
  embed(req: EmbedRequest, signal?: AbortSignal): Promise<EmbedResult>;
}

/** Token counts of a chat or text completion, in OpenAI's shape. */
export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

/** Per-request context the backend gives an endpoint. */
export interface EndpointContext {
  /** Unique engine-request id base; choices append `-<index>`. */
  readonly requestId: string;
  readonly signal?: AbortSignal;
  /** Cap a max_tokens that does not fit the context instead of rejecting the request. */
  readonly truncateMaxTokens?: boolean;
}

/** `["messages", 0, "role"]` → `messages[0].role`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const key of path) {
    if (typeof key === "number") out += `[${key}]`;
    else out += out === "" ? String(key) : `.${String(key)}`;
  }
  return out;
}

/**
 * Validates a body with a zod schema; the first problem becomes a 400
 * {@linkcode RequestError} whose message and `param` name the field.
 *
 * @example
 * ```ts
 * import { z } from "zod";
 * import { parseBody } from "./common.ts";
 * import { RequestError } from "../engine/types.ts";
 * try {
 *   parseBody(z.object({ n: z.number() }), { n: "2" });
 * } catch (e) {
 *   console.log((e as RequestError).param); // "n": the message names the field
 * }
 * ```
 */
export function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new RequestError("the request body must be a JSON object", 400, null, "invalid_body");
  }
  const result = schema.safeParse(body);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const param = issue === undefined ? null : formatPath(issue.path) || null;
  let reason = issue?.message ?? "invalid value";
  if (issue?.code === "invalid_type" && /received undefined$/.test(reason)) reason = "is required";
  throw new RequestError(
    param === null ? reason : `${param}: ${reason}`,
    400,
    param,
    "invalid_value",
  );
}

/** Checks a request's `model` against the served name: 404 `model_not_found` when different. */
export function checkModel(model: string | null | undefined, engine: EngineLike): void {
  if (model === undefined || model === null || model === engine.modelName) return;
  throw new RequestError(
    `The model "${model}" does not exist: this batch serves "${engine.modelName}"`,
    404,
    "model",
    "model_not_found",
  );
}

/** `stream: true` is refused: a batch has nowhere to stream to. */
export function checkNoStream(stream: boolean | null | undefined): void {
  if (stream === true) {
    throw new RequestError("stream is not supported in batch", 400, "stream", "invalid_value");
  }
}

const int = () => z.int();

/** Body fields chat and completions share (unknown fields are ignored). */
export const samplingFields = {
  model: z.string().nullish(),
  stream: z.boolean().nullish(),
  max_tokens: int().min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: int().min(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  n: int().min(1).max(64).nullish(),
  seed: int().nullish(),
  stop: z.union([z.string().min(1), z.array(z.string().min(1)).max(16)], {
    error: "expected a non-empty string or a list of at most 16 non-empty strings",
  }).nullish(),
  stop_token_ids: z.array(int().min(0)).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  repetition_penalty: z.number().gt(0).max(10).nullish(),
  logit_bias: z.record(z.string(), z.number().min(-100).max(100)).nullish(),
  ignore_eos: z.boolean().nullish(),
  min_tokens: int().min(0).nullish(),
};

/** The parsed shared fields. */
export type SamplingFields = z.infer<z.ZodObject<typeof samplingFields>>;

/** What {@linkcode buildSampling} needs besides the body's fields. */
export interface SamplingSetup {
  readonly engine: EngineLike;
  readonly promptTokens: number;
  /** The body's max token count (chat: max_completion_tokens ?? max_tokens). */
  readonly maxTokens: number | null | undefined;
  /** Used when neither the body nor generation_config.json gives a max (undefined: the context left). */
  readonly fallbackMaxTokens?: number;
  /** The field holding the prompt, for errors (`messages`, `prompt`). */
  readonly promptParam: string;
  readonly logprobs: boolean;
  readonly topLogprobs: number;
  /** Cap an explicit max that does not fit the context (else: 400 context_length_exceeded). */
  readonly truncateMaxTokens?: boolean;
  /** Constrain the answer to JSON (from the body's response_format, already checked). */
  readonly responseFormat?: ResponseFormat;
}

/**
 * Fills sampling parameters: the body's value, else generation_config.json's,
 * else OpenAI's default. An explicit max token count that does not fit the
 * context left is a 400 (as vLLM answers), unless `truncateMaxTokens`; a default
 * one is capped.
 */
export function buildSampling(f: SamplingFields, s: SamplingSetup): SamplingParams {
  const e = s.engine;
  const d = e.generationDefaults;
  const room = e.maxModelLen - s.promptTokens;
  if (room < 1) {
    throw new RequestError(
      `${s.promptParam}: this model's maximum context length is ${e.maxModelLen} tokens, but the ` +
        `prompt has ${s.promptTokens} tokens, which leaves no room for the completion`,
      400,
      s.promptParam,
      "context_length_exceeded",
    );
  }
  const explicit = s.maxTokens ?? undefined;
  if (explicit !== undefined && explicit > room && !s.truncateMaxTokens) {
    throw new RequestError(
      `${s.promptParam}: this model's maximum context length is ${e.maxModelLen} tokens, but ` +
        `${s.promptTokens} prompt tokens + ${explicit} completion tokens were requested ` +
        `(lower max_tokens, or run with --truncate-max-tokens)`,
      400,
      "max_tokens",
      "context_length_exceeded",
    );
  }
  const requested = s.maxTokens ?? d.maxNewTokens ?? s.fallbackMaxTokens;
  const maxTokens = requested === undefined ? room : Math.min(requested, room);
  const minTokens = f.min_tokens ?? 0;
  if (minTokens > maxTokens && s.maxTokens !== undefined && s.maxTokens !== null) {
    throw new RequestError(
      `min_tokens (${minTokens}) must not exceed max_tokens (${maxTokens})`,
      400,
      "min_tokens",
      "invalid_value",
    );
  }
  const vocab = e.tokenizer.vocabSize;
  const logitBias = new Map<number, number>();
  for (const [key, bias] of Object.entries(f.logit_bias ?? {})) {
    const id = /^\d+$/.test(key) ? Number(key) : NaN;
    if (!(id < vocab)) {
      throw new RequestError(
        `logit_bias: key "${key}" is not a token id in 0..${vocab - 1}`,
        400,
        "logit_bias",
        "invalid_value",
      );
    }
    logitBias.set(id, bias);
  }
  for (const id of f.stop_token_ids ?? []) {
    if (id >= vocab) {
      throw new RequestError(
        `stop_token_ids: ${id} is not a token id in 0..${vocab - 1}`,
        400,
        "stop_token_ids",
        "invalid_value",
      );
    }
  }
  const greedyDefault = d.doSample === false ? 0 : undefined;
  return {
    temperature: f.temperature ?? greedyDefault ?? d.temperature ?? 1,
    topP: f.top_p ?? d.topP ?? 1,
    topK: Math.max(0, f.top_k ?? d.topK ?? 0),
    minP: f.min_p ?? 0,
    ...(f.seed === undefined || f.seed === null ? {} : { seed: f.seed }),
    maxTokens,
    minTokens: Math.min(minTokens, maxTokens),
    stop: typeof f.stop === "string" ? [f.stop] : [...(f.stop ?? [])],
    stopTokenIds: [...(f.stop_token_ids ?? [])],
    ignoreEos: f.ignore_eos ?? false,
    presencePenalty: f.presence_penalty ?? 0,
    frequencyPenalty: f.frequency_penalty ?? 0,
    repetitionPenalty: f.repetition_penalty ?? d.repetitionPenalty ?? 1,
    logitBias,
    logprobs: s.logprobs,
    topLogprobs: s.topLogprobs,
    ...(s.responseFormat === undefined ? {} : { responseFormat: s.responseFormat }),
  };
}

/** Checks token ids given directly in a body (prompt / input) against the vocabulary. */
export function checkTokenIds(ids: readonly number[], engine: EngineLike, param: string): void {
  const vocab = engine.tokenizer.vocabSize;
  const bad = ids.find((id) => id >= vocab);
  if (bad !== undefined) {
    throw new RequestError(
      `${param}: token id ${bad} is not in 0..${vocab - 1}`,
      400,
      param,
      "invalid_value",
    );
  }
}

/**
 * Runs `n` engine requests for one prompt. Choice `i` > 0 gets a seed derived
 * from (seed, i), so choice 0 equals the `n` = 1 answer with the same seed;
 * without a seed the engine draws one per request.
 */
export function generateChoices(
  engine: EngineLike,
  promptIds: readonly number[],
  sampling: SamplingParams,
  n: number,
  idBase: string,
  signal?: AbortSignal,
): Promise<GenerateResult[]> {
  const requests: Promise<GenerateResult>[] = [];
  for (let i = 0; i < n; i++) {
    const seed = sampling.seed === undefined || i === 0
      ? sampling.seed
      : deriveSeed(sampling.seed, i);
    const { seed: _drop, ...rest } = sampling;
    requests.push(engine.generate({
      id: `${idBase}-${i}`,
      promptIds,
      sampling: seed === undefined ? rest : { ...rest, seed },
    }, signal));
  }
  return Promise.all(requests);
}

/** Unix time in whole seconds, for `created`. */
export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

/** Little-endian float32 bytes as base64 (OpenAI's `encoding_format: "base64"`). */
export function float32ToBase64(values: Float32Array): string {
  const bytes = new Uint8Array(values.length * 4);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i] as number, true);
  let binary = "";
  const CHUNK = 0x8000;
  for (let i = 0; i < bytes.length; i += CHUNK) {
    binary += String.fromCharCode(...bytes.subarray(i, i + CHUNK));
  }
  return btoa(binary);
}
