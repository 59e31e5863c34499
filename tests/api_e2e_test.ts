/**
 * Every request parameter of the three endpoints, end to end: the OpenAI
 * bodies go through {@linkcode ApiBackend} into the real GPU engine on the
 * shipped tiny model (random weights: gibberish, but deterministic), and what
 * comes back is checked against the float64 reference model.
 *
 * One engine serves the whole file. It is wrapped in a pass-through recorder
 * that keeps each engine request and result, so a response's token ids can be
 * compared with the reference's without re-encoding its text.
 */
import { assert, assertEquals } from "./_assert.ts";
import { gpuTest } from "./_gpu.ts";
import { argmax, logSoftmax, ReferenceModel } from "./reference.ts";
import { ApiBackend } from "../api/backend.ts";
import type { EngineLike } from "../api/common.ts";
import type { ChatCompletion } from "../api/chat.ts";
import type { TextCompletion } from "../api/completions.ts";
import type { EmbeddingList } from "../api/embeddings.ts";
import { Engine } from "../engine/engine.ts";
import type { Gpu } from "../engine/gpu/device.ts";
import {
  type EmbedRequest,
  type EmbedResult,
  type GenerateRequest,
  type GenerateResult,
  RequestError,
} from "../engine/types.ts";

const MODEL = "models/ernie-tiny";
const CHAT = "/v1/chat/completions";
const COMPLETIONS = "/v1/completions";
const EMBEDDINGS = "/v1/embeddings";
/** Logprobs and logits of the f32 GPU engine against the f64 reference. */
const TOL = 1e-3;

/** One engine request the backend made, in call order. */
interface Call {
  readonly request: GenerateRequest;
  readonly result: Promise<GenerateResult>;
}

/** The real engine, unchanged, with every generate request and result kept. */
class RecordingEngine implements EngineLike {
  readonly calls: Call[] = [];
  readonly embeds: EmbedRequest[] = [];
  constructor(readonly engine: Engine) {}
  get modelName(): string {
    return this.engine.modelName;
  }
  get maxModelLen(): number {
    return this.engine.maxModelLen;
  }
  get hiddenSize(): number {
    return this.engine.hiddenSize;
  }
  get tokenizer(): Engine["tokenizer"] {
    return this.engine.tokenizer;
  }
  get generationDefaults(): Engine["generationDefaults"] {
    return this.engine.generationDefaults;
  }
  generate(request: GenerateRequest, signal?: AbortSignal): Promise<GenerateResult> {
    const result = this.engine.generate(request, signal);
    this.calls.push({ request, result });
    return result;
  }
  embed(request: EmbedRequest, signal?: AbortSignal): Promise<EmbedResult> {
    this.embeds.push(request);
    return this.engine.embed(request, signal);
  }
}

interface Suite {
  readonly engine: Engine;
  readonly recorder: RecordingEngine;
  readonly backend: ApiBackend;
  readonly ref: ReferenceModel;
  /** Ids that end generation: config, generation_config and tokenizer eos ids. */
  readonly eos: readonly number[];
}

let suite: Promise<Suite> | undefined;

/** Loads the engine and the reference once for the whole file. */
function setup(gpu: Gpu): Promise<Suite> {
  suite ??= (async () => {
    const engine = await Engine.load(MODEL, { gpu });
    const recorder = new RecordingEngine(engine);
    const ref = await ReferenceModel.load(MODEL, { vocabLimit: engine.validVocab });
    const eos = [
      ...new Set([
        ...engine.config.eosTokenIds,
        ...(engine.generationDefaults.eosTokenIds ?? []),
        ...engine.tokenizer.eosTokenIds,
      ]),
    ];
    return { engine, recorder, backend: new ApiBackend(recorder), ref, eos };
  })();
  return suite;
}

const ctx = () => ({ customId: "e2e", signal: new AbortController().signal });
const STORY = "Tell me a story about a dragon.";
const user = (content: string) => ({ messages: [{ role: "user", content }] });

let nextCall = 0;

/**
 * Runs a body; returns the response and the engine requests and results
 * behind it, in choice order. Each call gets its own backend id prefix, so
 * concurrent calls' engine requests are told apart.
 */
async function call<T>(
  s: Suite,
  url: string,
  body: Record<string, unknown>,
): Promise<{ res: T; runs: GenerateResult[]; requests: GenerateRequest[] }> {
  const prefix = `call${nextCall++}`;
  const res = await new ApiBackend(s.recorder, { idPrefix: prefix }).run(url, body, ctx()) as T;
  const calls = s.recorder.calls.filter((c) => c.request.id.startsWith(`${prefix}-`));
  return {
    res,
    runs: await Promise.all(calls.map((c) => c.result)),
    requests: calls.map((c) => c.request),
  };
}

const chat = (s: Suite, body: Record<string, unknown>) => call<ChatCompletion>(s, CHAT, body);
const complete = (s: Suite, body: Record<string, unknown>) =>
  call<TextCompletion>(s, COMPLETIONS, body);

/** The 4xx a body gets. */
async function rejection(s: Suite, url: string, body: unknown): Promise<RequestError> {
  try {
    await s.backend.run(url, body, ctx());
  } catch (e) {
    assert(e instanceof RequestError, `expected a RequestError, got ${e}`);
    return e;
  }
  throw new Error(`${url} ${JSON.stringify(body)} was accepted`);
}

/** The chat-templated prompt ids of one user message. */
const chatIds = (s: Suite, content: string) =>
  s.engine.tokenizer.encodeChat([{ role: "user", content }]);

/** Choices without the per-response id and timestamp. */
const texts = (r: ChatCompletion) => r.choices.map((c) => c.message.content);

/** Reference logits predicting each of `out` after `prompt`, [out.length][vocab]. */
function stepLogits(ref: ReferenceModel, prompt: readonly number[], out: readonly number[]) {
  if (out.length === 0) return [];
  return ref.forward([...prompt, ...out.slice(0, -1)]).slice(prompt.length - 1);
}

/** `id` is the largest of `logits`, up to f32-vs-f64 rounding; names the step on failure. */
function assertChosen(logits: Float64Array, id: number, what: string): void {
  const best = argmax(logits);
  assert(
    logits[id]! >= logits[best]! - TOL,
    `${what}: chose ${id} (logit ${logits[id]}), the reference's best is ${best} (${logits[best]})`,
  );
}

interface Penalties {
  readonly repetition?: number;
  readonly presence?: number;
  readonly frequency?: number;
}

/**
 * The penalties applied by hand, from their definitions: repetition divides
 * positive / multiplies negative logits of every id in prompt or output;
 * presence and frequency subtract `presence + frequency·count` from the logits
 * of ids already generated.
 */
function penalise(
  logits: Float64Array,
  prompt: readonly number[],
  before: readonly number[],
  p: Penalties,
): Float64Array {
  const out = new Float64Array(logits);
  const r = p.repetition ?? 1;
  for (const id of new Set([...prompt, ...before])) {
    out[id] = out[id]! > 0 ? out[id]! / r : out[id]! * r;
  }
  const counts = new Map<number, number>();
  for (const id of before) counts.set(id, (counts.get(id) ?? 0) + 1);
  for (const [id, count] of counts) {
    out[id] = out[id]! - (p.presence ?? 0) - (p.frequency ?? 0) * count;
  }
  return out;
}

/** The reference's top `k` ids by logprob, best first. */
function topK(logprobs: Float64Array, k: number): number[] {
  return [...logprobs.keys()].sort((a, b) => logprobs[b]! - logprobs[a]! || a - b).slice(0, k);
}

/**
 * Checks one reported alternative against the reference: its logprob equals
 * the reference's `rank`-th best within TOL, and its token is a reference id
 * with (within TOL) that logprob, so near-ties may swap places.
 */
function assertAlternative(
  s: Suite,
  logprobs: Float64Array,
  rank: number,
  got: { token: string; logprob: number; bytes?: number[] },
  what: string,
): void {
  const order = topK(logprobs, rank + 1);
  const want = logprobs[order[rank]!]!;
  assert(Math.abs(got.logprob - want) <= TOL, `${what}: logprob ${got.logprob}, expected ${want}`);
  const tok = s.engine.tokenizer;
  const candidates = topK(logprobs, rank + 8).filter((id) =>
    Math.abs(logprobs[id]! - got.logprob) <= TOL
  );
  assert(
    candidates.some((id) =>
      tok.tokenText(id) === got.token &&
      (got.bytes === undefined || tok.idToBytes(id).join() === got.bytes.join())
    ),
    `${what}: token ${JSON.stringify(got.token)} is not the reference's id ${order[rank]}`,
  );
}

gpuTest(
  "chat temperature 0 is deterministic and equals the reference's greedy decode",
  async (gpu) => {
    const s = await setup(gpu);
    const body = { ...user(STORY), temperature: 0, max_tokens: 24 };
    const [a, b] = await Promise.all([chat(s, body), chat(s, body)]);
    assertEquals(texts(a.res), texts(b.res));
    assertEquals(a.runs[0]!.tokenIds, b.runs[0]!.tokenIds);
    const prompt = chatIds(s, STORY);
    assertEquals(a.requests[0]!.promptIds, prompt);
    const greedy = s.ref.greedy(prompt, 24, s.eos);
    assertEquals(a.runs[0]!.tokenIds, greedy);
    assertEquals(a.res.choices[0]!.message.content, a.runs[0]!.text);
    assert(a.runs[0]!.text.length > 0);
    assertEquals(a.res.usage.prompt_tokens, prompt.length);
    assertEquals(a.res.usage.completion_tokens, greedy.length);
    assertEquals(a.res.usage.total_tokens, prompt.length + greedy.length);
  },
);

gpuTest(
  "chat n=3 with a seed: three distinct choices, reproducible, choice 0 is n=1's",
  async (gpu) => {
    const s = await setup(gpu);
    const body = {
      ...user(STORY),
      temperature: 1,
      top_p: 1,
      seed: 4242,
      max_tokens: 16,
      ignore_eos: true,
    };
    const [three, again, one] = await Promise.all([
      chat(s, { ...body, n: 3 }),
      chat(s, { ...body, n: 3 }),
      chat(s, body),
    ]);
    assertEquals(three.res.choices.map((c) => c.index), [0, 1, 2]);
    assertEquals(texts(three.res), texts(again.res));
    assertEquals(three.runs.map((r) => r.tokenIds), again.runs.map((r) => r.tokenIds));
    assertEquals(three.runs[0]!.tokenIds, one.runs[0]!.tokenIds);
    assertEquals(texts(three.res)[0], texts(one.res)[0]);
    const ids = three.runs.map((r) => r.tokenIds.join());
    assertEquals(new Set(ids).size, 3, `choices should differ: ${ids.join(" | ")}`);
    assertEquals(three.res.usage.completion_tokens, 48);
  },
);

gpuTest("chat seed: the same seed gives the same text, different seeds differ", async (gpu) => {
  const s = await setup(gpu);
  const body = { ...user(STORY), temperature: 1, top_p: 1, max_tokens: 16, ignore_eos: true };
  const [a, b, c, d] = await Promise.all([
    chat(s, { ...body, seed: 11 }),
    chat(s, { ...body, seed: 11 }),
    chat(s, { ...body, seed: 12 }),
    chat(s, { ...body, seed: 13 }),
  ]);
  assertEquals(texts(a.res), texts(b.res));
  assertEquals(a.runs[0]!.tokenIds, b.runs[0]!.tokenIds);
  const distinct = new Set([a, c, d].map((r) => r.runs[0]!.tokenIds.join()));
  assertEquals(distinct.size, 3, "seeds 11, 12 and 13 sample three different completions");
});

gpuTest("chat stop (a string or a list) cuts the text before the stop string", async (gpu) => {
  const s = await setup(gpu);
  const body = { ...user(STORY), temperature: 0, max_tokens: 24, ignore_eos: true };
  const full = await chat(s, body);
  const text = full.res.choices[0]!.message.content;
  assertEquals(full.res.choices[0]!.finish_reason, "length");
  // Stop strings from the middle of the greedy text (no U+FFFD: byte fallback).
  const pick = (from: number) => {
    for (let at = from; at < text.length - 3; at++) {
      const stop = text.slice(at, at + 3);
      if (!stop.includes("\uFFFD") && stop.trim() === stop) return stop;
    }
    throw new Error(`no stop string in ${JSON.stringify(text)}`);
  };
  const early = pick(Math.floor(text.length / 4));
  const late = pick(Math.floor(text.length / 2));
  const [one, list, listLate] = await Promise.all([
    chat(s, { ...body, stop: early }),
    chat(s, { ...body, stop: ["\u0007never", late, early] }),
    chat(s, { ...body, stop: ["\u0007never", late] }),
  ]);
  for (const [r, stop] of [[one, early], [list, early], [listLate, late]] as const) {
    const choice = r.res.choices[0]!;
    const cut = text.slice(0, text.indexOf(stop));
    assertEquals(choice.message.content, cut, `stop ${JSON.stringify(stop)}`);
    assertEquals(choice.finish_reason, "stop");
    assert(!choice.message.content.includes(stop));
    assert(r.res.usage.completion_tokens < full.res.usage.completion_tokens);
    // The tokens run up to the one that completed the stop string.
    assertEquals(r.runs[0]!.tokenIds, full.runs[0]!.tokenIds.slice(0, r.runs[0]!.tokenIds.length));
  }
});

gpuTest(
  "chat max_tokens and max_completion_tokens end with 'length' at exactly that many",
  async (gpu) => {
    const s = await setup(gpu);
    const body = { ...user(STORY), temperature: 0, ignore_eos: true };
    const [seven, five] = await Promise.all([
      chat(s, { ...body, max_tokens: 7 }),
      chat(s, { ...body, max_tokens: 9, max_completion_tokens: 5 }),
    ]);
    assertEquals(seven.res.usage.completion_tokens, 7);
    assertEquals(seven.res.choices[0]!.finish_reason, "length");
    assertEquals(five.res.usage.completion_tokens, 5, "max_completion_tokens wins over max_tokens");
    assertEquals(five.res.choices[0]!.finish_reason, "length");
    assertEquals(five.runs[0]!.tokenIds, seven.runs[0]!.tokenIds.slice(0, 5));
  },
);

gpuTest("chat logit_bias +100 forces a token at every step; -100 bans one", async (gpu) => {
  const s = await setup(gpu);
  const prompt = chatIds(s, STORY);
  const body = { ...user(STORY), temperature: 0, max_tokens: 12, ignore_eos: true };
  const greedy = s.ref.greedy(prompt, 12);
  // The id greedy decoding repeats most: banning it changes several steps.
  const counts = new Map<number, number>();
  for (const id of greedy) counts.set(id, (counts.get(id) ?? 0) + 1);
  const banned = [...counts].sort((a, b) => b[1] - a[1])[0]![0];
  const forced = 1000;
  assert(!greedy.includes(forced));
  const [force, ban, banFirst] = await Promise.all([
    chat(s, { ...body, logit_bias: { [forced]: 100 } }),
    chat(s, { ...body, logit_bias: { [banned]: -100 } }),
    chat(s, { ...body, logit_bias: { [greedy[0]!]: -100 } }),
  ]);
  assertEquals(force.runs[0]!.tokenIds, Array(12).fill(forced));
  assertEquals(
    force.res.choices[0]!.message.content,
    s.engine.tokenizer.decode(Array(12).fill(forced)),
  );
  const out = ban.runs[0]!.tokenIds;
  assert(!out.includes(banned), `${banned} was banned but generated: ${out}`);
  assert(out.join() !== greedy.join());
  stepLogits(s.ref, prompt, out).forEach((l, t) => {
    l[banned] = l[banned]! - 100;
    assertChosen(l, out[t]!, `ban step ${t}`);
  });
  assert(banFirst.runs[0]!.tokenIds[0] !== greedy[0]);
});

gpuTest(
  "chat logprobs with top_logprobs 5 match the reference's log-softmax in OpenAI's shape",
  async (gpu) => {
    const s = await setup(gpu);
    const prompt = chatIds(s, STORY);
    const { res, runs } = await chat(s, {
      ...user(STORY),
      temperature: 0,
      max_tokens: 12,
      logprobs: true,
      top_logprobs: 5,
    });
    const out = runs[0]!.tokenIds;
    assertEquals(out, s.ref.greedy(prompt, 12, s.eos));
    const content = res.choices[0]!.logprobs!.content;
    assertEquals(content.length, out.length);
    assertEquals(res.usage.completion_tokens, content.length, "an end id is counted in both");
    const tok = s.engine.tokenizer;
    stepLogits(s.ref, prompt, out).forEach((logits, t) => {
      const lp = logSoftmax(logits);
      assert(lp.subarray(s.engine.validVocab).every((v) => v === -Infinity), "padding excluded");
      const entry = content[t]!;
      assertEquals(Object.keys(entry).sort(), ["bytes", "logprob", "token", "top_logprobs"]);
      assertEquals(entry.token, tok.tokenText(out[t]!));
      assertEquals(entry.bytes, tok.idToBytes(out[t]!));
      const want = lp[out[t]!]!;
      assert(Math.abs(entry.logprob - want) <= TOL, `step ${t}: ${entry.logprob} vs ${want}`);
      assertEquals(entry.top_logprobs.length, 5);
      entry.top_logprobs.forEach((alt, rank) => {
        assertEquals(Object.keys(alt).sort(), ["bytes", "logprob", "token"]);
        assertAlternative(s, lp, rank, alt, `step ${t} top ${rank}`);
      });
    });
  },
);

gpuTest(
  "chat presence, frequency and repetition penalties pick the penalised reference argmax",
  async (gpu) => {
    const s = await setup(gpu);
    const prompt = chatIds(s, STORY);
    const base = { ...user(STORY), temperature: 0, max_tokens: 16, ignore_eos: true };
    const cases: [Record<string, number>, Penalties][] = [
      [{ presence_penalty: 2 }, { presence: 2 }],
      [{ frequency_penalty: 1.5 }, { frequency: 1.5 }],
      [{ frequency_penalty: -2 }, { frequency: -2 }],
      [{ repetition_penalty: 1.8 }, { repetition: 1.8 }],
      [
        { presence_penalty: 0.5, frequency_penalty: 0.5, repetition_penalty: 1.2 },
        { presence: 0.5, frequency: 0.5, repetition: 1.2 },
      ],
    ];
    const greedy = s.ref.greedy(prompt, 16);
    const results = await Promise.all(cases.map(([fields]) => chat(s, { ...base, ...fields })));
    results.forEach(({ runs }, i) => {
      const [fields, penalties] = cases[i]!;
      const what = JSON.stringify(fields);
      const out = runs[0]!.tokenIds;
      assertEquals(out.length, 16);
      let changed = 0;
      stepLogits(s.ref, prompt, out).forEach((logits, t) => {
        const penalised = penalise(logits, prompt, out.slice(0, t), penalties);
        assertChosen(penalised, out[t]!, `${what} step ${t}`);
        if (argmax(logits) !== out[t]) changed++;
      });
      // Every case is built so that the penalty overturns the plain argmax somewhere.
      assert(changed > 0, `${what} never changed the greedy choice`);
      assert(out.join() !== greedy.join(), `${what}: same text as without the penalty`);
    });
  },
);

gpuTest("chat top_k 1, a tiny top_p and min_p 1 at temperature 1 are greedy", async (gpu) => {
  const s = await setup(gpu);
  const body = { ...user(STORY), max_tokens: 16, ignore_eos: true };
  const [greedy, k, p, m] = await Promise.all([
    chat(s, { ...body, temperature: 0 }),
    chat(s, { ...body, temperature: 1, top_p: 1, top_k: 1, seed: 1 }),
    chat(s, { ...body, temperature: 1, top_p: 1e-6, seed: 2 }),
    chat(s, { ...body, temperature: 1, top_p: 1, min_p: 1, seed: 3 }),
  ]);
  // Unrestricted sampling with one of these seeds leaves the greedy path.
  const free = await chat(s, { ...body, temperature: 1, top_p: 1, seed: 2 });
  assert(free.runs[0]!.tokenIds.join() !== greedy.runs[0]!.tokenIds.join());
  for (const [name, r] of [["top_k", k], ["top_p", p], ["min_p", m]] as const) {
    assertEquals(r.runs[0]!.tokenIds, greedy.runs[0]!.tokenIds, name);
    assertEquals(texts(r.res), texts(greedy.res), name);
  }
});

gpuTest(
  "chat min_tokens holds off a forced end-of-sequence; ignore_eos runs past it",
  async (gpu) => {
    const s = await setup(gpu);
    const eos = s.engine.tokenizer.eosTokenIds[0]!;
    assert(s.eos.includes(eos));
    const body = { ...user(STORY), temperature: 0, max_tokens: 20, logit_bias: { [eos]: 100 } };
    const [none, five, ignored, stopId] = await Promise.all([
      chat(s, body),
      chat(s, { ...body, min_tokens: 5 }),
      chat(s, { ...body, ignore_eos: true, max_tokens: 6 }),
      chat(s, {
        ...user(STORY),
        temperature: 0,
        max_tokens: 20,
        stop_token_ids: [1000],
        logit_bias: { 1000: 100 },
      }),
    ]);
    // The end id counts as a completion token (as in vLLM) but is not in the text.
    assertEquals(none.res.usage.completion_tokens, 1);
    assertEquals([none.res.choices[0]!.finish_reason, texts(none.res)[0]], ["stop", ""]);
    assertEquals(five.res.usage.completion_tokens, 6);
    assertEquals(five.res.choices[0]!.finish_reason, "stop");
    assert(
      five.runs[0]!.tokenIds.slice(0, 5).every((id) => !s.eos.includes(id)),
      "no end id before min_tokens",
    );
    assertEquals(five.runs[0]!.tokenIds[5], eos);
    // The first five steps are the greedy choice with every end id masked.
    const prompt = chatIds(s, STORY);
    const out = five.runs[0]!.tokenIds.slice(0, 5);
    stepLogits(s.ref, prompt, out).forEach((l, t) => {
      for (const id of s.eos) l[id] = -Infinity;
      assertChosen(l, out[t]!, `min_tokens step ${t}`);
    });
    assertEquals(ignored.runs[0]!.tokenIds, Array(6).fill(eos));
    assertEquals(ignored.res.choices[0]!.finish_reason, "length");
    assertEquals(texts(ignored.res)[0], "", "end ids are special: not in the text");
    assertEquals([stopId.res.usage.completion_tokens, stopId.res.choices[0]!.finish_reason], [
      1,
      "stop",
    ]);
  },
);

gpuTest(
  "chat refuses an unsupported schema keyword (400), stream (400), another model (404); ignores unknown fields",
  async (gpu) => {
    const s = await setup(gpu);
    const json = await rejection(s, CHAT, {
      ...user("x"),
      response_format: {
        type: "json_schema",
        json_schema: { name: "s", schema: { type: "number", multipleOf: 2 } },
      },
    });
    assertEquals([json.status, json.param], [400, "response_format.json_schema.schema"]);
    const stream = await rejection(s, CHAT, { ...user("x"), stream: true });
    assertEquals([stream.status, stream.param], [400, "stream"]);
    const model = await rejection(s, CHAT, { ...user("x"), model: "gpt-4o" });
    assertEquals([model.status, model.code, model.param], [404, "model_not_found", "model"]);
    const body = { ...user(STORY), temperature: 0, max_tokens: 8 };
    const [plain, extra, named, text] = await Promise.all([
      chat(s, body),
      chat(s, { ...body, user: "u-1", metadata: { a: 1 }, parallel_tool_calls: false, foo: [1] }),
      chat(s, { ...body, model: s.engine.modelName }),
      chat(s, { ...body, response_format: { type: "text" } }),
    ]);
    assertEquals(texts(extra.res), texts(plain.res));
    assertEquals(texts(named.res), texts(plain.res));
    assertEquals(texts(text.res), texts(plain.res));
    assertEquals(named.res.model, s.engine.modelName);
  },
);

gpuTest("chat content as text parts equals the same content as a string", async (gpu) => {
  const s = await setup(gpu);
  const base = { temperature: 0, max_tokens: 8 };
  const parts = (...texts: string[]) => ({
    messages: [{ role: "user", content: texts.map((text) => ({ type: "text", text })) }],
  });
  const [str, one, joined, two] = await Promise.all([
    chat(s, { ...user(STORY), ...base }),
    chat(s, { ...parts(STORY), ...base }),
    chat(s, { ...user("Tell me\na story."), ...base }),
    chat(s, { ...parts("Tell me", "a story."), ...base }),
  ]);
  assertEquals(one.requests[0]!.promptIds, str.requests[0]!.promptIds);
  assertEquals(texts(one.res), texts(str.res));
  // Several parts are joined with a newline.
  assertEquals(two.requests[0]!.promptIds, joined.requests[0]!.promptIds);
  assertEquals(texts(two.res), texts(joined.res));
});

gpuTest(
  "chat: control-token text in user content is not encoded as the control token",
  async (gpu) => {
    const s = await setup(gpu);
    const tok = s.engine.tokenizer;
    const [control] = tok.encode("<|end_of_sentence|>");
    assert(control !== undefined && tok.specialTokenIds.has(control));
    const count = (ids: readonly number[]) => ids.filter((id) => id === control).length;
    const body = { temperature: 0, max_tokens: 4 };
    const [benign, sneaky] = await Promise.all([
      chat(s, { ...user("a b"), ...body }),
      chat(s, { ...user("a<|end_of_sentence|>b"), ...body }),
    ]);
    const ids = sneaky.requests[0]!.promptIds;
    assertEquals(count(ids), count(benign.requests[0]!.promptIds));
    assert(ids.length > benign.requests[0]!.promptIds.length + 1, "spelled out as text pieces");
    assert(tok.decode(ids).includes("<|end_of_sentence|>"), "the text survives as text");
    assertEquals(sneaky.res.usage.prompt_tokens, ids.length);
    assertEquals(sneaky.runs[0]!.tokenIds, s.ref.greedy(ids, 4, s.eos));
  },
);

gpuTest(
  "completions: a string, strings, token ids and lists of them, choices in prompt order",
  async (gpu) => {
    const s = await setup(gpu);
    const tok = s.engine.tokenizer;
    const body = { temperature: 0, max_tokens: 8, ignore_eos: true };
    const a = "Once upon a time";
    const b = "The dragon said";
    const idsA = tok.encode(a, { addSpecialTokens: true });
    const idsB = [3, 500, 17, 900, 23];
    const [str, strs, ids, idLists, defaults] = await Promise.all([
      complete(s, { ...body, prompt: a }),
      complete(s, { ...body, prompt: [a, b] }),
      complete(s, { ...body, prompt: idsB }),
      complete(s, { ...body, prompt: [idsB, idsA] }),
      complete(s, { prompt: a, temperature: 0, ignore_eos: true }),
    ]);
    const greedyA = s.ref.greedy(idsA, 8);
    const greedyB = s.ref.greedy(idsB, 8);
    assertEquals(str.requests[0]!.promptIds, idsA);
    assertEquals(str.runs[0]!.tokenIds, greedyA);
    assertEquals(str.res.choices[0]!.text, str.runs[0]!.text);
    assertEquals(str.res.usage.prompt_tokens, idsA.length);
    assertEquals(strs.res.choices.map((c) => c.index), [0, 1]);
    assertEquals(strs.res.choices[0]!.text, str.res.choices[0]!.text);
    assertEquals(
      strs.runs[1]!.tokenIds,
      s.ref.greedy(tok.encode(b, { addSpecialTokens: true }), 8),
    );
    assertEquals(ids.runs[0]!.tokenIds, greedyB);
    assertEquals(idLists.res.choices.map((c) => c.text), [
      ids.res.choices[0]!.text,
      str.res.choices[0]!.text,
    ]);
    assertEquals(idLists.res.usage.prompt_tokens, idsA.length + idsB.length);
    assertEquals(idLists.res.usage.completion_tokens, 16);
    assertEquals(defaults.res.usage.completion_tokens, 16, "completions default to 16 tokens");
    assertEquals(defaults.res.choices[0]!.finish_reason, "length");
  },
);

gpuTest(
  "completions: n per prompt in prompt-major order, echo prepends the prompt, suffix is 400",
  async (gpu) => {
    const s = await setup(gpu);
    const tok = s.engine.tokenizer;
    const body = { temperature: 1, top_p: 1, seed: 9, max_tokens: 6, ignore_eos: true };
    const [two, first, echo, echoIds] = await Promise.all([
      complete(s, { ...body, prompt: ["Once upon a time", "The dragon said"], n: 2 }),
      complete(s, { ...body, prompt: "The dragon said" }),
      complete(s, { ...body, prompt: "Once upon a time", echo: true }),
      complete(s, { ...body, prompt: [3, 500, 17], echo: true }),
    ]);
    assertEquals(two.res.choices.map((c) => c.index), [0, 1, 2, 3]);
    assertEquals(two.requests.map((r) => r.promptIds.length > 0), [true, true, true, true]);
    assertEquals(two.requests[2]!.promptIds, first.requests[0]!.promptIds);
    assertEquals(two.res.choices[2]!.text, first.res.choices[0]!.text, "choice 0 of prompt 1");
    assertEquals(echo.res.choices[0]!.text, "Once upon a time" + echo.runs[0]!.text);
    assertEquals(echo.res.choices[0]!.text, "Once upon a time" + two.res.choices[0]!.text);
    assertEquals(
      echoIds.res.choices[0]!.text,
      tok.decode([3, 500, 17], { skipSpecialTokens: false }) + echoIds.runs[0]!.text,
    );
    const suffix = await rejection(s, COMPLETIONS, { prompt: "x", suffix: "y" });
    assertEquals([suffix.status, suffix.param], [400, "suffix"]);
  },
);

gpuTest(
  "completions logprobs 2: tokens, token_logprobs, top_logprobs, text_offset match the reference",
  async (gpu) => {
    const s = await setup(gpu);
    const tok = s.engine.tokenizer;
    const prompt = "Once upon a time";
    const ids = tok.encode(prompt, { addSpecialTokens: true });
    const { res, runs } = await complete(s, {
      prompt,
      temperature: 0,
      max_tokens: 10,
      logprobs: 2,
    });
    const out = runs[0]!.tokenIds;
    assertEquals(out, s.ref.greedy(ids, 10, s.eos));
    const lp = res.choices[0]!.logprobs!;
    assertEquals(Object.keys(lp).sort(), [
      "text_offset",
      "token_logprobs",
      "tokens",
      "top_logprobs",
    ]);
    assertEquals(lp.tokens, out.map((id) => tok.tokenText(id)));
    assertEquals(lp.text_offset[0], 0);
    stepLogits(s.ref, ids, out).forEach((logits, t) => {
      const ref = logSoftmax(logits);
      const want = ref[out[t]!]!;
      assert(
        Math.abs(lp.token_logprobs[t]! - want) <= TOL,
        `step ${t}: ${lp.token_logprobs[t]} vs ${want}`,
      );
      const top = Object.entries(lp.top_logprobs[t]!);
      assert(top.length >= 1 && top.length <= 2, `step ${t}: ${top.length} alternatives`);
      top.forEach(([token, logprob], rank) =>
        assertAlternative(s, ref, rank, { token, logprob }, `step ${t} top ${rank}`)
      );
      if (t > 0) assertEquals(lp.text_offset[t], lp.text_offset[t - 1]! + lp.tokens[t - 1]!.length);
    });
  },
);

gpuTest(
  "embeddings: strings, token ids, float and base64, dimensions, usage, the reference's vector",
  async (gpu) => {
    const s = await setup(gpu);
    const tok = s.engine.tokenizer;
    const H = s.engine.hiddenSize;
    const inputs = ["hello world", "a dragon"];
    const idsOf = (text: string) => tok.encode(text, { addSpecialTokens: true });
    const embed = (body: Record<string, unknown>) =>
      s.backend.run(EMBEDDINGS, body, ctx()) as Promise<EmbeddingList>;
    const idList = [3, 500, 17, 900];
    const [one, list, ids, idLists, b64, dims] = await Promise.all([
      embed({ input: inputs[0] }),
      embed({ input: inputs }),
      embed({ input: idList }),
      embed({ input: [idList, idsOf(inputs[1]!)] }),
      embed({ input: inputs, encoding_format: "base64" }),
      embed({ input: inputs[0], dimensions: H }),
    ]);
    const vector = (e: EmbeddingList, i: number) => e.data[i]!.embedding as number[];
    const expected = (ids: readonly number[]) => {
      const h = s.ref.hidden(ids);
      const norm = Math.hypot(...h);
      return [...h].map((v) => v / norm);
    };
    const close = (got: number[], want: number[], what: string) => {
      assertEquals(got.length, H, `${what}: length`);
      got.forEach((v, c) =>
        assert(Math.abs(v - want[c]!) <= 1e-4, `${what}[${c}]: got ${v}, expected ${want[c]}`)
      );
    };
    close(vector(one, 0), expected(idsOf(inputs[0]!)), "string");
    close(vector(list, 1), expected(idsOf(inputs[1]!)), "list[1]");
    close(vector(ids, 0), expected(idList), "token ids");
    close(vector(idLists, 0), expected(idList), "token id lists[0]");
    assertEquals(list.data.map((d) => [d.object, d.index]), [["embedding", 0], ["embedding", 1]]);
    assertEquals(vector(list, 0), vector(one, 0));
    assertEquals(vector(idLists, 1), vector(list, 1));
    assertEquals(vector(dims, 0), vector(one, 0));
    assertEquals(list.usage, {
      prompt_tokens: idsOf(inputs[0]!).length + idsOf(inputs[1]!).length,
      total_tokens: idsOf(inputs[0]!).length + idsOf(inputs[1]!).length,
    });
    assertEquals(ids.usage.prompt_tokens, idList.length);
    assertEquals(one.model, s.engine.modelName);
    b64.data.forEach((d, i) => {
      assertEquals(typeof d.embedding, "string");
      const bytes = Uint8Array.from(atob(d.embedding as string), (ch) => ch.charCodeAt(0));
      const view = new DataView(bytes.buffer);
      assertEquals(bytes.length, H * 4);
      const decoded = Array.from({ length: H }, (_, c) => view.getFloat32(c * 4, true));
      assertEquals(decoded, vector(list, i), `base64 input ${i}`);
    });
    const wrong = await rejection(s, EMBEDDINGS, { input: "x", dimensions: H / 2 });
    assertEquals([wrong.status, wrong.param], [400, "dimensions"]);
  },
);

// The shared engine is released once every test of this file has run.
Deno.test.afterAll(async () => {
  const s = await suite;
  suite = undefined;
  await s?.engine.close();
});
