/**
 * Steps that overlap the host's work (issue 8): once step n+1 is submitted,
 * the engine detokenizes step n's tokens and matches stop strings while the
 * step runs, and a sequence that a stop string ends there loses the token the
 * running step computes for it, so answers are those of a synchronous engine.
 */
import { assert, assertEquals } from "./_assert.ts";
import { Engine } from "../engine/engine.ts";
import { OutputText } from "../engine/detokenizer.ts";
import { DEFAULT_SAMPLING, type GenerateRequest } from "../engine/types.ts";

const MODEL = "models/ernie-tiny";

function req(id: string, extra: Partial<GenerateRequest["sampling"]> = {}): GenerateRequest {
  return {
    id,
    promptIds: [5, 6, 7, 8],
    sampling: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 4, ignoreEos: true, ...extra },
  };
}

Deno.test("a step's tokens are detokenized while the next step runs", async () => {
  const engine = await Engine.load(MODEL, { backend: "wasm", threads: 2 });
  const events: string[] = [];
  const runner = engine.runner as { step: (...a: unknown[]) => Promise<unknown> };
  const step = runner.step.bind(runner);
  let steps = 0;
  runner.step = (...a: unknown[]) => {
    events.push(`step ${++steps}`);
    return step(...a);
  };
  const push = OutputText.prototype.push;
  OutputText.prototype.push = function (this: OutputText, id: number) {
    events.push("text");
    return push.call(this, id);
  };
  try {
    const r = await engine.generate(req("a"));
    assertEquals(r.tokenIds.length, 4);
    // Token k comes back from step k; its text is pushed once step k + 1 is submitted.
    // The last token ends the request (max_tokens), so its text is pushed at once.
    assertEquals(events, [
      "step 1",
      "step 2",
      "text",
      "step 3",
      "text",
      "step 4",
      "text",
      "text",
    ]);
  } finally {
    OutputText.prototype.push = push;
    await engine.close();
  }
});

Deno.test("a stop string found while the next step runs ends the answer where it matched", async () => {
  const engine = await Engine.load(MODEL, { backend: "wasm", threads: 2 });
  try {
    const free = await engine.generate(req("free", { maxTokens: 12 }));
    // A stop string made of the text of the third and fourth tokens.
    const pieces = free.tokenIds.map((_, i) =>
      engine.tokenizer.decode(free.tokenIds.slice(0, i + 1))
    );
    const third = pieces[2]!;
    const fourth = pieces[3]!;
    const stop = fourth.slice(third.length - 1);
    assert(stop.length >= 2, `stop string ${JSON.stringify(stop)}`);
    const generated = engine.stats.generatedTokens;
    const alone = await engine.generate(req("alone", { maxTokens: 12, stop: [stop] }));
    assertEquals(alone.finishReason, "stop");
    // The token the running step computed after the stop is dropped, not counted.
    assertEquals(engine.stats.generatedTokens - generated, alone.tokenIds.length);
    assert(alone.tokenIds.length <= 4, `${alone.tokenIds.length} tokens after a stop at token 4`);
    assertEquals(alone.tokenIds, free.tokenIds.slice(0, alone.tokenIds.length));
    assert(!alone.text.includes(stop), alone.text);
    // The same among others that keep running: the same answer.
    const others = Array.from(
      { length: 6 },
      (_, i) => engine.generate({ ...req(`o${i}`, { maxTokens: 10 }), promptIds: [9 + i, 10, 11] }),
    );
    const batched = await engine.generate(req("batched", { maxTokens: 12, stop: [stop] }));
    await Promise.all(others);
    assertEquals(batched.tokenIds, alone.tokenIds);
    assertEquals(batched.text, alone.text);
  } finally {
    await engine.close();
  }
});

Deno.test("a failure in a request's text work ends that request alone, the step goes on", async () => {
  const engine = await Engine.load(MODEL, { backend: "wasm", threads: 2 });
  const push = OutputText.prototype.push;
  let calls = 0;
  OutputText.prototype.push = function (this: OutputText, id: number) {
    if (++calls === 3) throw new Error("planted text failure");
    return push.call(this, id);
  };
  try {
    const results = await Promise.allSettled(
      [0, 1, 2, 3].map((i) =>
        engine.generate({ ...req(`r${i}`, { maxTokens: 6 }), promptIds: [5 + i, 6, 7] })
      ),
    );
    const failed = results.filter((r) => r.status === "rejected");
    assertEquals(failed.length, 1);
    assert(String((failed[0] as PromiseRejectedResult).reason).includes("planted text failure"));
    for (const r of results) {
      if (r.status === "fulfilled") assertEquals(r.value.tokenIds.length, 6);
    }
    // The engine still serves.
    assertEquals((await engine.generate(req("after"))).tokenIds.length, 4);
  } finally {
    OutputText.prototype.push = push;
    await engine.close();
  }
});
