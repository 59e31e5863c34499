/**
 * `/v1/completions`: each prompt (text or token ids) → `n` engine requests →
 * a `text_completion` body whose choices are ordered prompt by prompt.
 *
 * @module
 */

import { z } from "zod";
import { type GenerateResult, RequestError, type StepLogprobs } from "../engine/types.ts";
import type { ModelTokenizer } from "../engine/loader/tokenizer.ts";
import {
  buildSampling,
  checkModel,
  checkNoStream,
  checkTokenIds,
  type CompletionUsage,
  type EndpointContext,
  type EngineLike,
  generateChoices,
  nowSeconds,
  parseBody,
  samplingFields,
} from "./common.ts";
import { finite } from "./chat.ts";
import { responseFormatField, toResponseFormat } from "./response_format.ts";

const tokenIds = z.array(z.int().min(0)).min(1);

/** The completions request body (unknown fields are ignored). */
export const completionRequestSchema = z.object({
  ...samplingFields,
  prompt: z.union([z.string(), z.array(z.string()).min(1), tokenIds, z.array(tokenIds).min(1)], {
    error: "expected a string, a list of strings, a list of token ids or a list of such lists",
  }),
  echo: z.boolean().nullish(),
  suffix: z.string().nullish(),
  logprobs: z.int().min(0).max(5).nullish(),
  best_of: z.int().min(1).nullish(),
  response_format: responseFormatField,
});

/** A parsed completions body. */
export type CompletionRequest = z.infer<typeof completionRequestSchema>;

/** The legacy completions logprobs shape. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[];
  text_offset: number[];
}

/** The `text_completion` response body. */
export interface TextCompletion {
  id: string;
  object: "text_completion";
  created: number;
  model: string;
  choices: {
    index: number;
    text: string;
    logprobs: CompletionLogprobs | null;
    finish_reason: GenerateResult["finishReason"];
  }[];
  usage: CompletionUsage;
}

/** Validates a completions body without tokenizing it. Throws {@linkcode RequestError}. */
export function validateCompletion(body: unknown, engine: EngineLike): CompletionRequest {
  const req = parseBody(completionRequestSchema, body);
  checkNoStream(req.stream);
  checkModel(req.model, engine);
  if (req.suffix !== undefined && req.suffix !== null && req.suffix !== "") {
    throw new RequestError("suffix is not supported", 400, "suffix", "invalid_value");
  }
  if (req.best_of !== undefined && req.best_of !== null && req.best_of !== (req.n ?? 1)) {
    throw new RequestError("best_of is not supported (it must equal n)", 400, "best_of");
  }
  if (req.echo === true && req.logprobs !== undefined && req.logprobs !== null) {
    throw new RequestError(
      "echo with logprobs is not supported (prompt logprobs are not computed)",
      400,
      "echo",
      "invalid_value",
    );
  }
  toResponseFormat(req.response_format, req);
  return req;
}

/** Prompts as text or ids, in order. */
function promptList(prompt: CompletionRequest["prompt"]): (string | number[])[] {
  if (typeof prompt === "string") return [prompt];
  if (prompt.every((p) => typeof p === "number")) return [prompt as number[]];
  return prompt as (string | number[])[];
}

/**
 * Runs a completions request on the engine.
 *
 * @example
 * ```ts
 * import { runCompletion } from "./completions.ts";
 * import { Engine } from "../engine/engine.ts";
 * await using engine = await Engine.load("models/ernie-tiny");
 * const body = await runCompletion(engine, { prompt: ["a", "b"], n: 2 }, { requestId: "r1" });
 * body.choices.map((c) => c.index); // [0, 1, 2, 3]: prompt 0's two choices, then prompt 1's
 * ```
 */
export async function runCompletion(
  engine: EngineLike,
  body: unknown,
  ctx: EndpointContext,
): Promise<TextCompletion> {
  const req = validateCompletion(body, engine);
  const tok = engine.tokenizer;
  const responseFormat = toResponseFormat(req.response_format, req);
  const prompts = promptList(req.prompt).map((p, i) => {
    const param = `prompt[${i}]`;
    const ids = typeof p === "string" ? tok.encode(p, { addSpecialTokens: true }) : p;
    if (ids.length === 0) {
      throw new RequestError(`${param}: the prompt is empty`, 400, param, "invalid_value");
    }
    checkTokenIds(ids, engine, param);
    const sampling = buildSampling(req, {
      engine,
      promptTokens: ids.length,
      maxTokens: req.max_tokens,
      fallbackMaxTokens: 16,
      promptParam: param,
      logprobs: req.logprobs !== undefined && req.logprobs !== null,
      topLogprobs: req.logprobs ?? 0,
      truncateMaxTokens: ctx.truncateMaxTokens,
      responseFormat,
    });
    const text = typeof p === "string" ? p : tok.decode(p, { skipSpecialTokens: false });
    return { ids, text, sampling };
  });
  const n = req.n ?? 1;
  const perPrompt = await Promise.all(
    prompts.map((p, i) =>
      generateChoices(engine, p.ids, p.sampling, n, `${ctx.requestId}-p${i}`, ctx.signal)
    ),
  );
  const echo = req.echo === true;
  const choices: TextCompletion["choices"] = [];
  let promptTokens = 0;
  let completionTokens = 0;
  perPrompt.forEach((results, i) => {
    const p = prompts[i];
    if (p === undefined) return;
    promptTokens += p.ids.length;
    for (const r of results) {
      completionTokens += r.tokenIds.length;
      const base = echo ? p.text : "";
      choices.push({
        index: choices.length,
        text: base + r.text,
        logprobs: req.logprobs === undefined || req.logprobs === null
          ? null
          : completionLogprobs(tok, r.logprobs ?? [], base.length),
        finish_reason: r.finishReason,
      });
    }
  });
  return {
    id: `cmpl-${crypto.randomUUID()}`,
    object: "text_completion",
    created: nowSeconds(),
    model: engine.modelName,
    choices,
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
      prompt_tokens_details: {
        cached_tokens: perPrompt.reduce((sum, rs) => sum + (rs[0]?.cachedTokens ?? 0), 0),
      },
    },
  };
}

/** Engine logprobs → the legacy completions shape; offsets count UTF-16 units from `start`. */
export function completionLogprobs(
  tokenizer: ModelTokenizer,
  steps: readonly StepLogprobs[],
  start: number,
): CompletionLogprobs {
  const out: CompletionLogprobs = {
    tokens: [],
    token_logprobs: [],
    top_logprobs: [],
    text_offset: [],
  };
  let offset = start;
  for (const s of steps) {
    const token = tokenizer.tokenText(s.tokenId);
    out.tokens.push(token);
    out.token_logprobs.push(finite(s.logprob));
    const top: Record<string, number> = {};
    for (const t of s.top) {
      const text = tokenizer.tokenText(t.tokenId);
      if (!(text in top)) top[text] = finite(t.logprob);
    }
    out.top_logprobs.push(top);
    out.text_offset.push(offset);
    offset += token.length;
  }
  return out;
}
