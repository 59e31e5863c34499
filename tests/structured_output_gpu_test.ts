/**
 * `response_format` under the gpu kernel class, where sampling runs on the GPU:
 * a constrained row's grammar mask is computed on the host while the forward pass
 * runs, uploaded, and applied by the sampling kernel, so only ids come back. Every
 * answer that stops must still parse and validate, bounded schemas must stop, and a
 * seeded constrained answer must not depend on the rest of the batch.
 */
import { assert, assertEquals } from "./_assert.ts";
import { gpuTest } from "./_gpu.ts";
import { ApiBackend } from "../api/backend.ts";
import type { ChatCompletion } from "../api/chat.ts";
import { Engine } from "../engine/engine.ts";
import type { ResponseFormat } from "../engine/types.ts";
import { BOUNDED, CORPUS } from "./_schema_corpus.ts";
import { validatorFor } from "./_grammar_walk.ts";

const MODEL = "models/ernie-tiny";
const CHAT = "/v1/chat/completions";
const ctx = () => ({ customId: "so-gpu", signal: new AbortController().signal });

function field(format: ResponseFormat): Record<string, unknown> {
  return format.type === "json_object"
    ? { type: "json_object" }
    : { type: "json_schema", json_schema: { name: "answer", schema: format.schema, strict: true } };
}

gpuTest(
  "gpu class: constrained answers sampled on the GPU within the grammar's masks parse and validate",
  async (gpu) => {
    await using engine = await Engine.load(MODEL, { gpu, kernels: "gpu", kvCacheDtype: "f32" });
    assert(engine.runner.deviceSampling === true, "the gpu class samples on the device");
    const backend = new ApiBackend(engine);
    for (const name of [...BOUNDED, "json_object"]) {
      const format = CORPUS[name]!;
      const valid = validatorFor(format);
      const results = await Promise.all([
        backend.run(CHAT, {
          messages: [{ role: "user", content: `Fill in ${name}.` }],
          temperature: 0,
          max_tokens: 200,
          response_format: field(format),
        }, ctx()),
        backend.run(CHAT, {
          messages: [{ role: "user", content: `Fill in ${name}.` }],
          temperature: 1,
          seed: 11,
          n: 3,
          max_tokens: 200,
          response_format: field(format),
        }, ctx()),
      ]) as ChatCompletion[];
      for (const choice of results.flatMap((r) => r.choices)) {
        const text = choice.message.content;
        if (BOUNDED.includes(name)) assertEquals(choice.finish_reason, "stop", `${name}: ${text}`);
        if (choice.finish_reason !== "stop") continue;
        let value: unknown;
        try {
          value = JSON.parse(text);
        } catch (e) {
          throw new Error(`${name}: the answer does not parse (${(e as Error).message}): ${text}`);
        }
        assert(valid(value), `${name}: the answer does not validate: ${text}`);
      }
    }
  },
);

gpuTest("gpu class: a seeded constrained answer is the same alone and among 16", async (gpu) => {
  await using engine = await Engine.load(MODEL, { gpu, kernels: "gpu", kvCacheDtype: "f32" });
  const backend = new ApiBackend(engine);
  const formats = [CORPUS.nested!, CORPUS.enums!, CORPUS.flat!];
  const body = (i: number) => ({
    messages: [{ role: "user", content: `Item ${i % 4}` }],
    temperature: 1,
    top_p: 0.95,
    seed: 500 + i,
    max_tokens: 60,
    ...(i % 4 === 3 ? {} : { response_format: field(formats[i % formats.length]!) }),
  });
  const probes = [0, 1, 2, 5, 13];
  const alone: string[] = [];
  for (const i of probes) {
    alone.push(
      (await backend.run(CHAT, body(i), ctx()) as ChatCompletion).choices[0]!.message.content,
    );
  }
  const batch = await Promise.all(
    Array.from(
      { length: 16 },
      (_, i) => backend.run(CHAT, body(i), ctx()) as Promise<ChatCompletion>,
    ),
  );
  assertEquals(probes.map((i) => batch[i]!.choices[0]!.message.content), alone);
});
