import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { ApiBackend } from "../api/backend.ts";
import type { EngineLike, GenerationDefaults } from "../api/common.ts";
import type { ChatCompletion } from "../api/chat.ts";
import type { TextCompletion } from "../api/completions.ts";
import type { EmbeddingList } from "../api/embeddings.ts";
import {
  type EmbedRequest,
  type EmbedResult,
  type GenerateRequest,
  type GenerateResult,
  RequestError,
} from "../engine/types.ts";
import { deriveSeed } from "../engine/rng.ts";
import { tinyTokenizer } from "./_tokenizer_fixture.ts";

const CHAT = "/v1/chat/completions";
const COMPLETIONS = "/v1/completions";
const EMBEDDINGS = "/v1/embeddings";

/** A fake engine: answers "out <prompt length>" and records what it was asked. */
class FakeEngine implements EngineLike {
  readonly modelName = "ernie-tiny";
  readonly maxModelLen = 64;
  readonly hiddenSize = 4;
  readonly tokenizer = tinyTokenizer();
  readonly requests: GenerateRequest[] = [];
  readonly embeds: EmbedRequest[] = [];
  constructor(readonly generationDefaults: GenerationDefaults = {}) {}

  generate(req: GenerateRequest): Promise<GenerateResult> {
    this.requests.push(req);
    const tokenIds = this.tokenizer.encode("hello");
    return Promise.resolve({
      id: req.id,
      tokenIds,
      text: "hello",
      finishReason: "length",
      promptTokens: req.promptIds.length,
      cachedTokens: 0,
      ...(req.sampling.logprobs
        ? {
          logprobs: tokenIds.map((tokenId) => ({
            tokenId,
            logprob: -0.5,
            top: Array.from({ length: req.sampling.topLogprobs }, (_, i) => ({
              tokenId: tokenId + i,
              logprob: -0.5 - i,
            })),
          })),
        }
        : {}),
    });
  }

  embed(req: EmbedRequest): Promise<EmbedResult> {
    this.embeds.push(req);
    return Promise.resolve({
      id: req.id,
      embedding: new Float32Array([0.1, -2, req.promptIds.length, 1e-3]),
      promptTokens: req.promptIds.length,
    });
  }
}

const ctx = () => ({ customId: "c1", signal: new AbortController().signal });
const user = (content: string) => ({ messages: [{ role: "user", content }] });

async function rejection(p: Promise<unknown>): Promise<RequestError> {
  try {
    await p;
  } catch (e) {
    assert(e instanceof RequestError, `expected a RequestError, got ${e}`);
    return e;
  }
  throw new Error("expected a rejection");
}

Deno.test("schema errors name the field", async () => {
  const backend = new ApiBackend(new FakeEngine());
  const cases: [string, unknown, string][] = [
    [CHAT, {}, "messages"],
    [CHAT, { messages: [{ role: "tool", content: "x" }] }, "messages[0].role"],
    [
      CHAT,
      { messages: [{ role: "user", content: [{ type: "image_url" }] }] },
      "messages[0].content",
    ],
    [CHAT, { ...user("x"), temperature: 3 }, "temperature"],
    [CHAT, { ...user("x"), n: 0 }, "n"],
    [CHAT, { ...user("x"), stop: 5 }, "stop"],
    [CHAT, { ...user("x"), top_logprobs: 3 }, "top_logprobs"],
    [CHAT, { ...user("x"), logprobs: true, top_logprobs: 21 }, "top_logprobs"],
    [CHAT, { ...user("x"), logit_bias: { "5": 200 } }, "logit_bias.5"],
    [CHAT, { ...user("x"), response_format: { type: "yaml" } }, "response_format.type"],
    [
      CHAT,
      {
        ...user("x"),
        response_format: {
          type: "json_schema",
          json_schema: { name: "s", schema: { type: "string", pattern: "^a+$" } },
        },
      },
      "response_format.json_schema.schema",
    ],
    [COMPLETIONS, {}, "prompt"],
    [COMPLETIONS, { prompt: "x", suffix: "y" }, "suffix"],
    [COMPLETIONS, { prompt: "x", logprobs: 6 }, "logprobs"],
    [EMBEDDINGS, { input: "x", encoding_format: "int8" }, "encoding_format"],
    [EMBEDDINGS, { input: "x", dimensions: 3 }, "dimensions"],
  ];
  for (const [url, body, param] of cases) {
    let thrown: unknown;
    try {
      backend.validate(url, body);
    } catch (e) {
      thrown = e;
    }
    assert(thrown instanceof RequestError, `${url} ${JSON.stringify(body)} was accepted`);
    assertEquals(thrown.param, param, `${JSON.stringify(body)}: ${thrown.message}`);
    assertEquals(thrown.status, 400);
    assert(thrown.message.includes(param), `"${thrown.message}" does not name ${param}`);
    const run = await rejection(backend.run(url, body, ctx()));
    assertEquals(run.param, param);
  }
});

Deno.test("run-time errors: logit_bias id, token ids, context length", async () => {
  const backend = new ApiBackend(new FakeEngine());
  const bias = await rejection(
    backend.run(CHAT, { ...user("x"), logit_bias: { "99999": 1 } }, ctx()),
  );
  assertEquals(bias.param, "logit_bias");
  const ids = await rejection(backend.run(COMPLETIONS, { prompt: [1, 99999] }, ctx()));
  assertEquals(ids.param, "prompt[0]");
  const long = await rejection(backend.run(CHAT, user("a ".repeat(80)), ctx()));
  assertEquals(long.code, "context_length_exceeded");
  assert(/64 tokens/.test(long.message), long.message);
  const embed = await rejection(backend.run(EMBEDDINGS, { input: ["ok", "a ".repeat(80)] }, ctx()));
  assertEquals([embed.code, embed.param], ["context_length_exceeded", "input[1]"]);
});

Deno.test("stream: true is refused with 400", async () => {
  const e = await rejection(
    new ApiBackend(new FakeEngine()).run(CHAT, { ...user("x"), stream: true }, ctx()),
  );
  assertEquals([e.status, e.message], [400, "stream is not supported in batch"]);
});

Deno.test("a different model name is 404 model_not_found; the served one is fine", async () => {
  const backend = new ApiBackend(new FakeEngine());
  const e = await rejection(backend.run(CHAT, { ...user("x"), model: "gpt-4o" }, ctx()));
  assertEquals([e.status, e.code, e.param], [404, "model_not_found", "model"]);
  await backend.run(CHAT, { ...user("x"), model: "ernie-tiny" }, ctx());
});

Deno.test("unknown URL is a 400 naming it", async () => {
  const backend = new ApiBackend(new FakeEngine());
  assertEquals(backend.urls, [CHAT, COMPLETIONS, EMBEDDINGS]);
  const e = await rejection(backend.run("/v1/responses", {}, ctx()));
  assertEquals([e.status, e.param], [400, "url"]);
  assert(e.message.includes("/v1/responses"));
});

Deno.test("chat.completion has OpenAI's shape", async () => {
  const engine = new FakeEngine();
  const body = await new ApiBackend(engine).run(CHAT, user("hi"), ctx()) as ChatCompletion;
  assert(/^chatcmpl-[0-9a-f-]{36}$/.test(body.id), body.id);
  assert(Number.isInteger(body.created));
  const promptTokens = engine.tokenizer.encodeChat([{ role: "user", content: "hi" }]).length;
  const completionTokens = engine.tokenizer.encode("hello").length;
  assertEquals({ ...body, id: "", created: 0 }, {
    id: "",
    object: "chat.completion",
    created: 0,
    model: "ernie-tiny",
    choices: [{
      index: 0,
      message: { role: "assistant", content: "hello", reasoning_content: null, tool_calls: null },
      logprobs: null,
      finish_reason: "length",
    }],
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
      prompt_tokens_details: { cached_tokens: 0 },
    },
  });
  assertEquals(
    engine.requests[0]?.promptIds,
    engine.tokenizer.encodeChat([{ role: "user", content: "hi" }]),
  );
});

Deno.test("chat logprobs: token, logprob, bytes and top_logprobs", async () => {
  const engine = new FakeEngine();
  const body = await new ApiBackend(engine).run(
    CHAT,
    { ...user("hi"), logprobs: true, top_logprobs: 2 },
    ctx(),
  ) as ChatCompletion;
  const content = body.choices[0]?.logprobs?.content ?? [];
  const id = engine.tokenizer.encode("hello")[0] ?? -1;
  assertEquals(content[0], {
    token: "hello",
    logprob: -0.5,
    bytes: [...new TextEncoder().encode("hello")],
    top_logprobs: [
      { token: "hello", logprob: -0.5, bytes: [...new TextEncoder().encode("hello")] },
      {
        token: engine.tokenizer.tokenText(id + 1),
        logprob: -1.5,
        bytes: engine.tokenizer.idToBytes(id + 1),
      },
    ],
  });
});

Deno.test("n choices get seeds derived from (seed, index) and unique ids", async () => {
  const engine = new FakeEngine();
  const body = await new ApiBackend(engine).run(
    CHAT,
    { ...user("hi"), n: 3, seed: 42 },
    ctx(),
  ) as ChatCompletion;
  assertEquals(body.choices.map((c) => c.index), [0, 1, 2]);
  assertEquals(engine.requests.map((r) => r.sampling.seed), [
    42,
    deriveSeed(42, 1),
    deriveSeed(42, 2),
  ]);
  assertEquals(new Set(engine.requests.map((r) => r.id)).size, 3);
  assertEquals(body.usage.completion_tokens, 3 * engine.tokenizer.encode("hello").length);
  await new ApiBackend(engine).run(CHAT, { ...user("hi"), n: 2 }, ctx());
  assertEquals(engine.requests.slice(3).map((r) => r.sampling.seed), [undefined, undefined]);
});

Deno.test("sampling: body, then generation_config.json, then OpenAI defaults; max_tokens capped when asked", async () => {
  const engine = new FakeEngine({ temperature: 0.8, topP: 0.8, repetitionPenalty: 1.1 });
  await assertRejects(
    () => new ApiBackend(engine).run(CHAT, { ...user("hi"), max_tokens: 1000 }, ctx()),
    /maximum context length is 64 tokens.*1000 completion tokens/,
  );
  const backend = new ApiBackend(engine, { truncateMaxTokens: true });
  await backend.run(CHAT, { ...user("hi"), top_p: 0.5, stop: "x", max_tokens: 1000 }, ctx());
  await backend.run(CHAT, {
    ...user("hi"),
    max_completion_tokens: 5,
    min_tokens: 2,
    logit_bias: { "7": -100 },
  }, ctx());
  const prompt = engine.tokenizer.encodeChat([{ role: "user", content: "hi" }]).length;
  const [a, b] = engine.requests.map((r) => r.sampling);
  assertEquals([a?.temperature, a?.topP, a?.repetitionPenalty, a?.stop], [0.8, 0.5, 1.1, ["x"]]);
  assertEquals(a?.maxTokens, 64 - prompt); // capped at the context left
  assertEquals([b?.maxTokens, b?.minTokens, b?.topK, b?.ignoreEos], [5, 2, 0, false]);
  assertEquals([...(b?.logitBias ?? [])], [[7, -100]]);
  await backend.run(COMPLETIONS, { prompt: "hi" }, ctx());
  assertEquals(engine.requests[2]?.sampling.maxTokens, 16); // completions' default
});

Deno.test("completions: each prompt gets its own choices, in order", async () => {
  const engine = new FakeEngine();
  const backend = new ApiBackend(engine);
  const body = await backend.run(
    COMPLETIONS,
    { prompt: ["hi", "hello world"], n: 2 },
    ctx(),
  ) as TextCompletion;
  assert(body.id.startsWith("cmpl-"));
  assertEquals(body.object, "text_completion");
  assertEquals(body.choices.map((c) => [c.index, c.text, c.logprobs, c.finish_reason]), [
    [0, "hello", null, "length"],
    [1, "hello", null, "length"],
    [2, "hello", null, "length"],
    [3, "hello", null, "length"],
  ]);
  const hi = engine.tokenizer.encode("hi");
  const hw = engine.tokenizer.encode("hello world");
  assertEquals(engine.requests.map((r) => r.promptIds), [hi, hi, hw, hw]);
  assertEquals(body.usage.prompt_tokens, hi.length + hw.length);

  const ids = await backend.run(COMPLETIONS, { prompt: [[5, 6], [7]] }, ctx()) as TextCompletion;
  assertEquals(ids.choices.length, 2);
  assertEquals(engine.requests.slice(4).map((r) => r.promptIds), [[5, 6], [7]]);
  const single = await backend.run(
    COMPLETIONS,
    { prompt: [5, 6, 7], echo: true },
    ctx(),
  ) as TextCompletion;
  assertEquals(single.choices.length, 1);
  assertEquals(
    single.choices[0]?.text,
    engine.tokenizer.decode([5, 6, 7], { skipSpecialTokens: false }) + "hello",
  );
});

Deno.test("completions logprobs use the legacy shape with text offsets", async () => {
  const engine = new FakeEngine();
  const body = await new ApiBackend(engine).run(
    COMPLETIONS,
    { prompt: "hi", logprobs: 2 },
    ctx(),
  ) as TextCompletion;
  const lp = body.choices[0]?.logprobs;
  const id = engine.tokenizer.encode("hello")[0] ?? -1;
  assertEquals(lp, {
    tokens: ["hello"],
    token_logprobs: [-0.5],
    top_logprobs: [{ hello: -0.5, [engine.tokenizer.tokenText(id + 1)]: -1.5 }],
    text_offset: [0],
  });
  assertEquals(engine.requests[0]?.sampling.topLogprobs, 2);
});

Deno.test("embeddings: float and base64 (little-endian f32) with usage", async () => {
  const engine = new FakeEngine();
  const backend = new ApiBackend(engine);
  const body = await backend.run(
    EMBEDDINGS,
    { input: ["hi", "hello world"], dimensions: 4 },
    ctx(),
  ) as EmbeddingList;
  const hi = engine.tokenizer.encode("hi").length;
  const hw = engine.tokenizer.encode("hello world").length;
  const f = (x: number) => Math.fround(x);
  assertEquals(body, {
    object: "list",
    data: [
      { object: "embedding", index: 0, embedding: [f(0.1), -2, hi, f(1e-3)] },
      { object: "embedding", index: 1, embedding: [f(0.1), -2, hw, f(1e-3)] },
    ],
    model: "ernie-tiny",
    usage: { prompt_tokens: hi + hw, total_tokens: hi + hw },
  });
  const b64 = await backend.run(
    EMBEDDINGS,
    { input: [1, 2, 3], encoding_format: "base64" },
    ctx(),
  ) as EmbeddingList;
  const text = b64.data[0]?.embedding;
  assert(typeof text === "string");
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const view = new DataView(bytes.buffer);
  assertEquals([0, 1, 2, 3].map((i) => view.getFloat32(i * 4, true)), [f(0.1), -2, 3, f(1e-3)]);
});

Deno.test("engine request ids are unique across requests of one backend", async () => {
  const engine = new FakeEngine();
  const backend = new ApiBackend(engine, { idPrefix: "t" });
  await Promise.all([1, 2, 3].map(() => backend.run(CHAT, user("hi"), ctx())));
  await backend.run(EMBEDDINGS, { input: "x" }, ctx());
  const ids = [...engine.requests.map((r) => r.id), ...engine.embeds.map((r) => r.id)];
  assertEquals(new Set(ids).size, 4);
  assert(ids.every((id) => id.startsWith("t-")));
});

const ERNIE_TINY = new URL("../models/ernie-tiny", import.meta.url).pathname;
const hasErnieTiny = await Deno.stat(`${ERNIE_TINY}/config.json`).then(() => true, () => false);

Deno.test({
  name: "forValidation checks bodies against models/ernie-tiny without running them",
  ignore: !hasErnieTiny,
  fn: async () => {
    const backend = await ApiBackend.forValidation(ERNIE_TINY, "served");
    backend.validate(CHAT, { ...user("hi"), model: "served" });
    let thrown: unknown;
    try {
      backend.validate(CHAT, { ...user("hi"), model: "ernie-tiny" });
    } catch (e) {
      thrown = e;
    }
    assert(thrown instanceof RequestError && thrown.status === 404);
    let failed = false;
    await backend.run(CHAT, user("hi"), ctx()).catch(() => (failed = true));
    assert(failed, "a validation-only backend must not run requests");
  },
});
