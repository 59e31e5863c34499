import { assert, assertEquals } from "./_assert.ts";
import { join } from "node:path";
import { argmax, logSoftmax, ReferenceModel, rmsNorm, ropeInterleaved } from "./reference.ts";

const TINY = join(new URL("..", import.meta.url).pathname, "models/ernie-tiny");
/** Number of ids the fixture tokenizer defines; ids at or above it are padding. */
const tokenizerSize = async () =>
  Object.keys(JSON.parse(await Deno.readTextFile(join(TINY, "tokenizer.json"))).model.vocab).length;

function assertClose(got: Float64Array, want: Float64Array, tol: number, what: string): void {
  assertEquals(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    const [g, w] = [got[i]!, want[i]!];
    if (g === w) continue; // covers ±Infinity
    if (!(Math.abs(g - w) <= tol * (1 + Math.abs(w)))) {
      throw new Error(`${what}: index ${i} is ${g}, expected ${w}`);
    }
  }
}

Deno.test("reference: RoPE rotates adjacent pairs (interleaved), not halves", () => {
  // head_dim 4, theta 100: pair 0 turns by pos·1, pair 1 by pos·100^(-1/2) = pos·0.1.
  const x = ropeInterleaved(new Float64Array([1, 0, 0, 1]), 1, 100);
  assertClose(
    x,
    new Float64Array([Math.cos(1), Math.sin(1), -Math.sin(0.1), Math.cos(0.1)]),
    1e-15,
    "rope",
  );
  const y = ropeInterleaved(new Float64Array([3, 4, 5, 6]), 2, 100);
  const [c1, s1, c2, s2] = [Math.cos(2), Math.sin(2), Math.cos(0.2), Math.sin(0.2)];
  assertClose(
    y,
    new Float64Array([3 * c1 - 4 * s1, 4 * c1 + 3 * s1, 5 * c2 - 6 * s2, 6 * c2 + 5 * s2]),
    1e-15,
    "rope",
  );
  assertEquals([...ropeInterleaved(new Float64Array([1, 2, 3, 4]), 0, 100)], [1, 2, 3, 4]);
});

Deno.test("reference: RMSNorm multiplies the weight directly, eps inside the root", () => {
  const y = rmsNorm(new Float64Array([3, 4]), new Float64Array([1, 2]), 0.5);
  const r = 1 / Math.sqrt((9 + 16) / 2 + 0.5);
  assertClose(y, new Float64Array([3 * r, 8 * r]), 1e-15, "rmsnorm");
});

Deno.test("reference: logSoftmax normalises and keeps -Infinity", () => {
  const l = logSoftmax(new Float64Array([1, 2, -Infinity, 3]));
  assertEquals(l[2], -Infinity);
  assertClose(
    new Float64Array([l.reduce((s, v) => s + Math.exp(v), 0)]),
    new Float64Array([1]),
    1e-12,
    "sum",
  );
  assertEquals(argmax(new Float64Array([0, 5, 5, 1])), 1);
});

Deno.test("reference: prefill logits equal step-by-step decode logits", async () => {
  const ref = await ReferenceModel.load(TINY);
  const ids = [3, 500, 17, 900, 23, 1200, 42, 7];
  const prefill = ref.forward(ids);
  const cache = ref.newCache();
  ids.forEach((id, t) => assertClose(ref.step(cache, [id], t)[0]!, prefill[t]!, 1e-10, `pos ${t}`));
  // A prompt prefilled in two chunks gives the same logits too.
  const chunked = ref.newCache();
  const tail = [...ref.step(chunked, ids.slice(0, 3), 0), ...ref.step(chunked, ids.slice(3), 3)];
  tail.forEach((l, t) => assertClose(l, prefill[t]!, 1e-10, `chunked pos ${t}`));
});

Deno.test("reference: padding vocab is masked and the tiny model is confident", async () => {
  const limit = await tokenizerSize();
  const ref = await ReferenceModel.load(TINY, { vocabLimit: limit });
  assert(ref.config.vocab > limit, "the fixture has padding vocab");
  const logits = ref.forward([3, 100, 200, 300]);
  let margins = 0;
  for (const l of logits) {
    assert(l.subarray(limit).every((v) => v === -Infinity));
    const real = [...l.subarray(0, limit)];
    const mean = real.reduce((a, b) => a + b, 0) / real.length;
    const std = Math.sqrt(real.reduce((a, b) => a + (b - mean) ** 2, 0) / real.length);
    assert(std > 3, `logit std ${std} should be several units`);
    const [top1, top2] = real.sort((a, b) => b - a);
    margins += top1! - top2!;
  }
  assert(
    margins / logits.length > 0.5,
    `mean greedy margin ${margins / logits.length} is too small`,
  );
});

Deno.test("reference: greedy decoding matches argmax of forward and stops at eos", async () => {
  const ref = await ReferenceModel.load(TINY, { vocabLimit: await tokenizerSize() });
  const prompt = [3, 900, 23];
  const out = ref.greedy(prompt, 6);
  assertEquals(out.length, 6);
  const all = ref.forward([...prompt, ...out]);
  out.forEach((id, i) => assertEquals(argmax(all[prompt.length - 1 + i]!), id));
  const eos = out[out.length - 1]!;
  assertEquals(ref.greedy(prompt, 6, [eos]), out.slice(0, out.indexOf(eos) + 1));
});
