/**
 * `/v1/chat/completions`: body → chat-templated prompt ids and sampling
 * parameters → `n` engine requests → a `chat.completion` body.
 *
 * @module
 */

import { z } from "zod";
import { type GenerateResult, RequestError, type StepLogprobs } from "../engine/types.ts";
import type { ChatMessage, ModelTokenizer } from "../engine/loader/tokenizer.ts";
import {
  buildSampling,
  checkModel,
  checkNoStream,
  type CompletionUsage,
  type EndpointContext,
  type EngineLike,
  generateChoices,
  nowSeconds,
  parseBody,
  samplingFields,
} from "./common.ts";
import { responseFormatField, toResponseFormat } from "./response_format.ts";

const textPart = z.object({ type: z.literal("text"), text: z.string() });

const message = z.object({
  role: z.enum(["system", "developer", "user", "assistant"]),
  content: z.union([z.string(), z.array(textPart)], {
    error: 'expected a string or a list of {"type": "text", "text": ...} parts',
  }),
});

/** The chat completions request body (unknown fields are ignored). */
export const chatRequestSchema = z.object({
  ...samplingFields,
  messages: z.array(message).min(1),
  max_completion_tokens: z.int().min(1).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.int().min(0).max(20).nullish(),
  response_format: responseFormatField,
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
  add_generation_prompt: z.boolean().nullish(),
});

/** A parsed chat completions body. */
export type ChatRequest = z.infer<typeof chatRequestSchema>;

/** One `logprobs.content` entry of a chat choice. */
export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

/** The `chat.completion` response body. */
export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: {
    index: number;
    message: { role: "assistant"; content: string; reasoning_content: null; tool_calls: null };
    logprobs: { content: ChatTokenLogprob[] } | null;
    finish_reason: GenerateResult["finishReason"];
  }[];
  usage: CompletionUsage;
}

/**
 * Validates a chat body without tokenizing it: schema, model, stream,
 * response_format (its JSON schema included), top_logprobs. Throws {@linkcode RequestError}.
 */
export function validateChat(body: unknown, engine: EngineLike): ChatRequest {
  const req = parseBody(chatRequestSchema, body);
  checkNoStream(req.stream);
  checkModel(req.model, engine);
  toResponseFormat(req.response_format, req);
  if ((req.top_logprobs ?? 0) > 0 && req.logprobs !== true) {
    throw new RequestError(
      "top_logprobs: requires logprobs to be true",
      400,
      "top_logprobs",
      "invalid_value",
    );
  }
  return req;
}

/** The messages as the template sees them: text parts joined with "\n"; developer → system. */
export function toTemplateMessages(req: ChatRequest): ChatMessage[] {
  return req.messages.map((m) => ({
    role: m.role === "developer" ? "system" : m.role,
    content: typeof m.content === "string" ? m.content : m.content.map((p) => p.text).join("\n"),
  }));
}

/**
 * Runs a chat completions request on the engine.
 *
 * @example
 * ```ts
 * import { runChat } from "./chat.ts";
 * import { Engine } from "../engine/engine.ts";
 * await using engine = await Engine.load("models/ernie-tiny");
 * const body = await runChat(engine, { messages: [{ role: "user", content: "hi" }] }, { requestId: "r1" });
 * ```
 */
export async function runChat(
  engine: EngineLike,
  body: unknown,
  ctx: EndpointContext,
): Promise<ChatCompletion> {
  const req = validateChat(body, engine);
  let promptIds: number[];
  try {
    promptIds = engine.tokenizer.encodeChat(toTemplateMessages(req), {
      addGenerationPrompt: req.add_generation_prompt ?? true,
      kwargs: req.chat_template_kwargs ?? {},
    });
  } catch (e) {
    throw new RequestError(
      `messages: the chat template could not be applied: ${(e as Error).message}`,
      400,
      "messages",
      "invalid_value",
    );
  }
  const logprobs = req.logprobs === true;
  const sampling = buildSampling(req, {
    engine,
    promptTokens: promptIds.length,
    maxTokens: req.max_completion_tokens ?? req.max_tokens,
    promptParam: "messages",
    logprobs,
    topLogprobs: logprobs ? req.top_logprobs ?? 0 : 0,
    truncateMaxTokens: ctx.truncateMaxTokens,
    responseFormat: toResponseFormat(req.response_format, req),
  });
  const n = req.n ?? 1;
  const results = await generateChoices(
    engine,
    promptIds,
    sampling,
    n,
    ctx.requestId,
    ctx.signal,
  );
  const completionTokens = results.reduce((sum, r) => sum + r.tokenIds.length, 0);
  return {
    id: `chatcmpl-${crypto.randomUUID()}`,
    object: "chat.completion",
    created: nowSeconds(),
    model: engine.modelName,
    choices: results.map((r, index) => ({
      index,
      message: { role: "assistant", content: r.text, reasoning_content: null, tool_calls: null },
      logprobs: logprobs ? { content: chatLogprobs(engine.tokenizer, r.logprobs ?? []) } : null,
      finish_reason: r.finishReason,
    })),
    usage: {
      prompt_tokens: promptIds.length,
      completion_tokens: completionTokens,
      total_tokens: promptIds.length + completionTokens,
      prompt_tokens_details: { cached_tokens: results[0]?.cachedTokens ?? 0 },
    },
  };
}

/** Engine logprobs → chat `logprobs.content`. */
export function chatLogprobs(
  tokenizer: ModelTokenizer,
  steps: readonly StepLogprobs[],
): ChatTokenLogprob[] {
  const entry = (tokenId: number, logprob: number) => ({
    token: tokenizer.tokenText(tokenId),
    logprob: finite(logprob),
    bytes: tokenizer.idToBytes(tokenId),
  });
  return steps.map((s) => ({
    ...entry(s.tokenId, s.logprob),
    top_logprobs: s.top.map((t) => entry(t.tokenId, t.logprob)),
  }));
}

/** JSON has no -Infinity: OpenAI clamps to a very negative number; so do we. */
export function finite(logprob: number): number {
  return Number.isFinite(logprob) ? logprob : -9999;
}
