/**
 * `response_format` end to end on the shipped tiny model, whose random
 * weights never write JSON on their own: chat and completions bodies go
 * through {@linkcode ApiBackend} into the real engine, and every answer that
 * finishes with `stop` must parse and validate (ajv).
 */
import { assert, assertEquals } from "./_assert.ts";
import { gpuTest } from "./_gpu.ts";
import { ApiBackend } from "../api/backend.ts";
import type { ChatCompletion } from "../api/chat.ts";
import type { TextCompletion } from "../api/completions.ts";
import { Engine } from "../engine/engine.ts";
import type { Gpu } from "../engine/gpu/device.ts";
import { RequestError, type ResponseFormat } from "../engine/types.ts";
import { BOUNDED, CORPUS } from "./_schema_corpus.ts";
import { validatorFor } from "./_grammar_walk.ts";

const MODEL = "models/ernie-tiny";
const CHAT = "/v1/chat/completions";
const COMPLETIONS = "/v1/completions";

let loaded: Promise<{ engine: Engine; backend: ApiBackend }> | undefined;
function setup(gpu: Gpu) {
  loaded ??= (async () => {
    const engine = await Engine.load(MODEL, { gpu });
    return { engine, backend: new ApiBackend(engine) };
  })();
  return loaded;
}

const ctx = () => ({ customId: "so", signal: new AbortController().signal });

/** The body field for a corpus format. */
function field(format: ResponseFormat): Record<string, unknown> {
  return format.type === "json_object"
    ? { type: "json_object" }
    : { type: "json_schema", json_schema: { name: "answer", schema: format.schema, strict: true } };
}

const ask = (content: string, extra: Record<string, unknown>) => ({
  messages: [{ role: "user", content }],
  ...extra,
});

gpuTest("unconstrained, the tiny model's answers are not JSON", async (gpu) => {
  const { backend } = await setup(gpu);
  const res = await backend.run(
    CHAT,
    ask("Reply in JSON.", { max_tokens: 40, temperature: 0 }),
    ctx(),
  ) as ChatCompletion;
  let parses = true;
  try {
    JSON.parse(res.choices[0]!.message.content);
  } catch {
    parses = false;
  }
  assert(!parses, `the random model wrote JSON by itself: ${res.choices[0]!.message.content}`);
});

for (const [name, format] of Object.entries(CORPUS)) {
  gpuTest(
    `response_format "${name}": greedy and seeded answers that stop parse and validate`,
    async (gpu) => {
      const { backend } = await setup(gpu);
      const valid = validatorFor(format);
      const bounded = BOUNDED.includes(name);
      const bodies = [
        ask(`Fill in ${name}.`, {
          temperature: 0,
          max_tokens: 300,
          response_format: field(format),
        }),
        ask(`Fill in ${name}.`, {
          temperature: 1,
          seed: 7,
          n: 4,
          max_tokens: 300,
          response_format: field(format),
        }),
      ];
      // One at a time: a greedy request alone must not take the engine's GPU-argmax path.
      const results: ChatCompletion[] = [];
      for (const b of bodies) results.push(await backend.run(CHAT, b, ctx()) as ChatCompletion);
      let stopped = 0;
      for (const choice of results.flatMap((r) => r.choices)) {
        const text = choice.message.content;
        if (bounded) assertEquals(choice.finish_reason, "stop", `${name} did not finish: ${text}`);
        if (choice.finish_reason !== "stop") continue;
        stopped++;
        let value: unknown;
        try {
          value = JSON.parse(text);
        } catch (e) {
          throw new Error(`${name}: the answer does not parse (${(e as Error).message}): ${text}`);
        }
        assert(valid(value), `${name}: the answer does not validate: ${text}`);
      }
      if (bounded) assertEquals(stopped, 5);
    },
  );
}

gpuTest("response_format on /v1/completions: the answer validates", async (gpu) => {
  const { backend } = await setup(gpu);
  const format = CORPUS.enums!;
  const res = await backend.run(COMPLETIONS, {
    prompt: ["Label:", "Sentiment of 'great':"],
    max_tokens: 200,
    temperature: 0.8,
    seed: 3,
    response_format: field(format),
  }, ctx()) as TextCompletion;
  const valid = validatorFor(format);
  assertEquals(res.choices.length, 2);
  for (const c of res.choices) {
    assertEquals(c.finish_reason, "stop");
    assert(valid(JSON.parse(c.text)), c.text);
  }
});

gpuTest("max_tokens reached mid-document gives finish_reason length, never stop", async (gpu) => {
  const { backend } = await setup(gpu);
  for (const max of [1, 3, 6]) {
    const res = await backend.run(
      CHAT,
      ask("x", { temperature: 0, max_tokens: max, response_format: field(CORPUS.enums!) }),
      ctx(),
    ) as ChatCompletion;
    const c = res.choices[0]!;
    assertEquals(c.finish_reason, "length", c.message.content);
    assertEquals(res.usage.completion_tokens, max);
    let parses = true;
    try {
      JSON.parse(c.message.content);
    } catch {
      parses = false;
    }
    assert(!parses, `a cut document parsed: ${c.message.content}`);
  }
});

gpuTest("seeded constrained answers are identical alone and in a batch of 64", async (gpu) => {
  const { backend } = await setup(gpu);
  const formats = [CORPUS.nested!, CORPUS.enums!, CORPUS.flat!, CORPUS.json_object!];
  const body = (i: number) =>
    ask(`Item ${i % 8}`, {
      temperature: 1,
      top_p: 0.95,
      seed: 100 + i,
      max_tokens: 60,
      ...(i % 5 === 4 ? {} : { response_format: field(formats[i % formats.length]!) }),
    });
  const probes = [0, 1, 2, 3, 4, 9, 31, 63];
  const alone: string[] = [];
  for (const i of probes) {
    const r = await backend.run(CHAT, body(i), ctx()) as ChatCompletion;
    alone.push(r.choices[0]!.message.content);
  }
  const batch = await Promise.all(
    Array.from(
      { length: 64 },
      (_, i) => backend.run(CHAT, body(i), ctx()) as Promise<ChatCompletion>,
    ),
  );
  const differ = probes.filter((i, k) => batch[i]!.choices[0]!.message.content !== alone[k]);
  assertEquals(
    differ,
    [],
    `requests ${differ} differ: ${
      JSON.stringify(probes.map((i, k) => [alone[k], batch[i]!.choices[0]!.message.content]))
    }`,
  );
});

gpuTest("a schema repeated across requests is compiled once", async (gpu) => {
  const { engine, backend } = await setup(gpu);
  const schema = { type: "object", properties: { once: { type: "boolean" } }, required: ["once"] };
  const rf = { type: "json_schema", json_schema: { name: "once", schema } };
  const before = { ...engine.grammarStats };
  await Promise.all(
    Array.from(
      { length: 8 },
      (_, i) => backend.run(CHAT, ask(`x${i}`, { max_tokens: 30, response_format: rf }), ctx()),
    ),
  );
  await backend.run(CHAT, ask("y", { max_tokens: 30, response_format: rf }), ctx());
  assertEquals(engine.grammarStats.compiled - before.compiled, 1);
  assert(engine.grammarStats.masks - before.masks >= 9);
});

gpuTest("unsupported schema keywords and conflicting fields are 400s naming them", async (gpu) => {
  const { backend } = await setup(gpu);
  const bad = async (body: unknown): Promise<RequestError> => {
    try {
      await backend.run(CHAT, body, ctx());
    } catch (e) {
      assert(e instanceof RequestError, String(e));
      return e;
    }
    throw new Error("accepted");
  };
  const e1 = await bad(ask("x", {
    response_format: {
      type: "json_schema",
      json_schema: {
        name: "s",
        schema: { type: "array", items: { type: "string" }, uniqueItems: true },
      },
    },
  }));
  assertEquals(e1.status, 400);
  assert(e1.message.includes('"uniqueItems"'), e1.message);
  const e2 = await bad(ask("x", { stop: ["}"], response_format: { type: "json_object" } }));
  assertEquals(e2.param, "stop");
  const e3 = await bad(ask("x", { response_format: { type: "yaml" } }));
  assertEquals(e3.param, "response_format.type");
  backend.validate(CHAT, ask("x", { response_format: { type: "json_object" } }));
});
