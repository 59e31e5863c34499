/**
 * `/v1/embeddings`: each input (text or token ids) → one engine embed request
 * → an embeddings `list` body.
 *
 * @module
 */

import { z } from "zod";
import { RequestError } from "../engine/types.ts";
import {
  checkModel,
  checkTokenIds,
  type EndpointContext,
  type EngineLike,
  float32ToBase64,
  parseBody,
} from "./common.ts";

const tokenIds = z.array(z.int().min(0)).min(1);

/** The embeddings request body (unknown fields are ignored). */
export const embeddingRequestSchema = z.object({
  model: z.string().nullish(),
  input: z.union([z.string(), z.array(z.string()).min(1), tokenIds, z.array(tokenIds).min(1)], {
    error: "expected a string, a list of strings, a list of token ids or a list of such lists",
  }),
  encoding_format: z.enum(["float", "base64"]).nullish(),
  dimensions: z.int().min(1).nullish(),
});

/** A parsed embeddings body. */
export type EmbeddingRequest = z.infer<typeof embeddingRequestSchema>;

/** The embeddings response body. */
export interface EmbeddingList {
  object: "list";
  data: { object: "embedding"; index: number; embedding: number[] | string }[];
  model: string;
  usage: { prompt_tokens: number; total_tokens: number };
}

/** Validates an embeddings body without tokenizing it. Throws {@linkcode RequestError}. */
export function validateEmbedding(body: unknown, engine: EngineLike): EmbeddingRequest {
  const req = parseBody(embeddingRequestSchema, body);
  checkModel(req.model, engine);
  if (
    req.dimensions !== undefined && req.dimensions !== null && req.dimensions !== engine.hiddenSize
  ) {
    throw new RequestError(
      `dimensions: this model's embeddings have ${engine.hiddenSize} dimensions, not ${req.dimensions}`,
      400,
      "dimensions",
      "invalid_value",
    );
  }
  return req;
}

/**
 * Runs an embeddings request on the engine.
 *
 * @example
 * ```ts
 * import { runEmbedding } from "./embeddings.ts";
 * import { Engine } from "../engine/engine.ts";
 * await using engine = await Engine.load("models/ernie-tiny");
 * const body = await runEmbedding(engine, { input: ["a", "b"] }, { requestId: "e1" });
 * body.data.length; // 2
 * ```
 */
export async function runEmbedding(
  engine: EngineLike,
  body: unknown,
  ctx: EndpointContext,
): Promise<EmbeddingList> {
  const req = validateEmbedding(body, engine);
  const input = req.input;
  const inputs: (string | number[])[] = typeof input === "string"
    ? [input]
    : input.every((x) => typeof x === "number")
    ? [input as number[]]
    : input as (string | number[])[];
  const prompts = inputs.map((x, i) => {
    const param = `input[${i}]`;
    const ids = typeof x === "string" ? engine.tokenizer.encode(x, { addSpecialTokens: true }) : x;
    if (ids.length === 0) {
      throw new RequestError(`${param}: the input is empty`, 400, param, "invalid_value");
    }
    checkTokenIds(ids, engine, param);
    if (ids.length > engine.maxModelLen) {
      throw new RequestError(
        `${param}: this model's maximum context length is ${engine.maxModelLen} tokens, ` +
          `but the input has ${ids.length} tokens`,
        400,
        param,
        "context_length_exceeded",
      );
    }
    return ids;
  });
  const results = await Promise.all(
    prompts.map((ids, i) =>
      engine.embed({ id: `${ctx.requestId}-${i}`, promptIds: ids }, ctx.signal)
    ),
  );
  const base64 = req.encoding_format === "base64";
  const promptTokens = results.reduce((sum, r) => sum + r.promptTokens, 0);
  return {
    object: "list",
    data: results.map((r, index) => ({
      object: "embedding",
      index,
      embedding: base64 ? float32ToBase64(r.embedding) : Array.from(r.embedding),
    })),
    model: engine.modelName,
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
  };
}
