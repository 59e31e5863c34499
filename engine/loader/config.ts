/**
 * Parses `config.json` and `generation_config.json` of an ERNIE-4.5 model
 * directory into frozen, typed objects. Every check that a user can fix
 * happens here, with an error naming the file and the field; the rest of the
 * engine trusts these types.
 *
 * @module
 */

import { join } from "node:path";

/** The model shape and special ids, from `config.json`. */
export interface ModelConfig {
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  /** Width of one attention head (`head_dim`, default hidden / heads). */
  readonly headDim: number;
  /** Rows of the embedding; may exceed the tokenizer size (padding). */
  readonly vocabSize: number;
  readonly maxPositionEmbeddings: number;
  readonly ropeTheta: number;
  readonly rmsNormEps: number;
  readonly tieWordEmbeddings: boolean;
  readonly bosTokenId: number;
  /** `eos_token_id` may be a number or a list in the file; always a list here. */
  readonly eosTokenIds: readonly number[];
  readonly padTokenId: number;
  /** Positions are divided by this (Paddle configs; default 1). */
  readonly compressionRatio: number;
  /** As written in the file, e.g. `"bfloat16"`. */
  readonly torchDtype: string;
}

/** Optional sampling defaults from `generation_config.json`. */
export interface GenerationConfig {
  readonly temperature?: number;
  readonly topP?: number;
  readonly topK?: number;
  readonly repetitionPenalty?: number;
  readonly doSample?: boolean;
  readonly eosTokenIds?: readonly number[];
  readonly maxNewTokens?: number;
}

type Json = Record<string, unknown>;

/** Reads fields of one JSON object, throwing errors that name the file and field. */
class FieldReader {
  constructor(readonly obj: Json, readonly file: string) {}

  fail(field: string, what: string): never {
    throw new Error(`Cannot load model "${this.file}": field "${field}" ${what}`);
  }

  has(field: string): boolean {
    return this.obj[field] !== undefined && this.obj[field] !== null;
  }

  int(field: string, opts: { min?: number; fallback?: number } = {}): number {
    const min = opts.min ?? 1;
    const v = this.obj[field];
    if (v === undefined || v === null) {
      if (opts.fallback !== undefined) return opts.fallback;
      this.fail(field, `is missing; it must be ${min === 1 ? "a positive" : "a"} integer`);
    }
    if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
      this.fail(
        field,
        `must be ${min === 1 ? "a positive integer" : `an integer ≥ ${min}`}, got ${
          JSON.stringify(v)
        }`,
      );
    }
    return v;
  }

  positive(field: string, fallback?: number): number {
    const v = this.obj[field];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      this.fail(field, "is missing; it must be a positive number");
    }
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      this.fail(field, `must be a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  }

  bool(field: string, fallback: boolean): boolean {
    const v = this.obj[field];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "boolean") this.fail(field, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  string(field: string, fallback: string): string {
    const v = this.obj[field];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== "string") this.fail(field, `must be a string, got ${JSON.stringify(v)}`);
    return v;
  }

  /** A token id or a list of them. */
  ids(field: string, fallback?: readonly number[]): readonly number[] | undefined {
    const v = this.obj[field];
    if (v === undefined || v === null) return fallback;
    const list = Array.isArray(v) ? v : [v];
    if (list.length === 0 || !list.every((x) => Number.isInteger(x) && x >= 0)) {
      this.fail(field, `must be a token id or a list of token ids, got ${JSON.stringify(v)}`);
    }
    return Object.freeze(list as number[]);
  }
}

function asObject(json: unknown, file: string): Json {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new Error(`Cannot load model "${file}": the file must hold a JSON object`);
  }
  return json as Json;
}

/**
 * Validates a parsed `config.json` object. `file` is only used in errors.
 *
 * @example
 * ```ts ignore
 * const cfg = parseModelConfig(JSON.parse(text), "models/ernie-tiny/config.json");
 * cfg.headDim; // 32
 * ```
 */
export function parseModelConfig(json: unknown, file: string): ModelConfig {
  const r: FieldReader = new FieldReader(asObject(json, file), file);
  const hiddenSize = r.int("hidden_size");
  const numHeads = r.int("num_attention_heads");
  const numKvHeads = r.int("num_key_value_heads", { fallback: numHeads });
  if (numHeads % numKvHeads !== 0) {
    r.fail(
      "num_key_value_heads",
      `(${numKvHeads}) must divide num_attention_heads (${numHeads})`,
    );
  }
  let headDim: number;
  if (r.has("head_dim")) {
    headDim = r.int("head_dim");
  } else {
    if (hiddenSize % numHeads !== 0) {
      r.fail("head_dim", "is missing and hidden_size is not divisible by num_attention_heads");
    }
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) r.fail("head_dim", `must be even for RoPE, got ${headDim}`);
  const act = r.string("hidden_act", "silu");
  if (act !== "silu") {
    r.fail("hidden_act", `must be "silu" (the only activation supported), got "${act}"`);
  }
  if (r.bool("use_bias", false)) {
    r.fail("use_bias", "is true, but this engine only supports ERNIE-4.5 without biases");
  }
  const scaling = r.obj["rope_scaling"];
  if (scaling !== undefined && scaling !== null) {
    r.fail("rope_scaling", "is set, but RoPE scaling is not supported; remove it or use null");
  }
  const config: ModelConfig = {
    hiddenSize,
    intermediateSize: r.int("intermediate_size"),
    numLayers: r.int("num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: r.int("vocab_size"),
    maxPositionEmbeddings: r.int("max_position_embeddings", { fallback: 131072 }),
    ropeTheta: r.positive("rope_theta", 500000),
    rmsNormEps: r.positive("rms_norm_eps", 1e-5),
    tieWordEmbeddings: r.bool("tie_word_embeddings", true),
    bosTokenId: r.int("bos_token_id", { min: 0, fallback: 1 }),
    eosTokenIds: r.ids("eos_token_id", [2]) ?? [2],
    padTokenId: r.int("pad_token_id", { min: 0, fallback: 0 }),
    compressionRatio: r.positive("compression_ratio", 1),
    torchDtype: r.string("torch_dtype", "bfloat16"),
  };
  return Object.freeze(config);
}

async function readJson(file: string, what: string): Promise<unknown | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new Error(`Cannot load ${what} "${file}": ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`Cannot load ${what} "${file}": not valid JSON (${(e as Error).message})`);
  }
}

/**
 * Reads and validates `DIR/config.json`.
 *
 * @example
 * ```ts
 * const cfg = await loadModelConfig("models/ernie-tiny");
 * ```
 */
export async function loadModelConfig(dir: string): Promise<ModelConfig> {
  const file = join(dir, "config.json");
  const json = await readJson(file, "model");
  if (json === undefined) {
    throw new Error(
      `Cannot load model "${file}": the file does not exist; is "${dir}" a model directory?`,
    );
  }
  return parseModelConfig(json, file);
}

/**
 * Validates a parsed `generation_config.json` object; absent fields stay absent.
 *
 * @example
 * ```ts
 * parseGenerationConfig({ temperature: 0.8 }, "g.json"); // { temperature: 0.8 }
 * ```
 */
export function parseGenerationConfig(json: unknown, file: string): GenerationConfig {
  const r: FieldReader = new FieldReader(asObject(json, file), file);
  const out: {
    -readonly [K in keyof GenerationConfig]: GenerationConfig[K];
  } = {};
  if (r.has("temperature")) {
    const t = r.obj["temperature"];
    if (typeof t !== "number" || !(t >= 0)) r.fail("temperature", "must be a number ≥ 0");
    out.temperature = t;
  }
  if (r.has("top_p")) {
    const p = r.obj["top_p"];
    if (typeof p !== "number" || !(p > 0 && p <= 1)) r.fail("top_p", "must be a number in (0, 1]");
    out.topP = p;
  }
  if (r.has("top_k")) out.topK = r.int("top_k", { min: 0 });
  if (r.has("repetition_penalty")) out.repetitionPenalty = r.positive("repetition_penalty");
  if (r.has("do_sample")) out.doSample = r.bool("do_sample", false);
  const eos = r.ids("eos_token_id");
  if (eos !== undefined) out.eosTokenIds = eos;
  if (r.has("max_new_tokens")) out.maxNewTokens = r.int("max_new_tokens");
  return Object.freeze(out);
}

/**
 * Reads `DIR/generation_config.json`; an absent file gives `{}`.
 *
 * @example
 * ```ts
 * const gen = await loadGenerationConfig("models/ernie-tiny"); // { temperature: 0.8, ... }
 * ```
 */
export async function loadGenerationConfig(dir: string): Promise<GenerationConfig> {
  const file = join(dir, "generation_config.json");
  const json = await readJson(file, "generation config");
  return json === undefined ? Object.freeze({}) : parseGenerationConfig(json, file);
}
