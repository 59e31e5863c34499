/**
 * `deno run -A bench/structured_output.ts`: the cost of `response_format`.
 *  1. Token masks at ERNIE-4.5's vocabulary size: a synthetic SentencePiece
 *     vocabulary of 103,424 pieces laid out like ERNIE's (specials, 256 byte
 *     pieces, Latin and CJK pieces, punctuation runs such as `{"` and `":`);
 *     time to describe it to xgrammar, to compile each schema, and per mask
 *     (mean, p50, p95, max) along random walks.
 *  2. Batch throughput with and without schemas, in the same run on the same
 *     engine: 64 seeded sampled requests, free text vs a `json_schema` vs
 *     `json_object`.
 * Flags: --model DIR (default models/ernie-tiny; bench/tmp/ernie-0.3b-random
 * has the real shapes), --seqs N (64), --max-tokens N (32), --walk-steps N (400),
 * --backend auto|webgpu|wasm.
 * Prints one JSON object.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ApiBackend } from "../api/backend.ts";
import type { ChatCompletion } from "../api/chat.ts";
import { Engine } from "../engine/engine.ts";
import { GrammarEngine, maskAllows } from "../engine/grammar.ts";
import { ModelTokenizer } from "../engine/loader/tokenizer.ts";
import type { ResponseFormat } from "../engine/types.ts";
import { buildVocab, SPACE, tokenizerJson } from "../tools/_bpe.ts";
import { lcg } from "../tests/_grammar_walk.ts";
import { CORPUS } from "../tests/_schema_corpus.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "models/ernie-tiny" },
    seqs: { type: "string", default: "64" },
    "max-tokens": { type: "string", default: "32" },
    "walk-steps": { type: "string", default: "400" },
    backend: { type: "string", default: "auto" },
  },
});
if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", Deno.makeTempDirSync());
const ERNIE_VOCAB = 103424;

/** ERNIE-like pieces: byte pieces and ASCII from the fixture, then Latin, CJK and punctuation. */
function syntheticVocab(size: number): string[] {
  const rand = lcg(2024);
  const vocab = buildVocab([]);
  const seen = new Set(vocab);
  const add = (p: string) => {
    if (vocab.length < size && !seen.has(p)) {
      seen.add(p);
      vocab.push(p);
    }
  };
  const pick = (s: string) => s[Math.floor(rand() * s.length)]!;
  for (const p of ['{"', '":', '",', '"}', "},", "}]", "[{", '":"', '","', " {", '": "', '", "']) {
    add(p);
  }
  for (let cp = 0x4e00; cp < 0x4e00 + 20000; cp++) add(String.fromCodePoint(cp)); // CJK characters
  const letters = "etaoinshrdlcumwfgypbvkjxqz";
  const punct = "{}[]\":,.!?;()-_'/\\*#@&%$+=<>|~`";
  while (vocab.length < size) {
    const r = rand();
    if (r < 0.45) {
      let w = rand() < 0.5 ? SPACE : "";
      const n = 2 + Math.floor(rand() * 8);
      for (let i = 0; i < n; i++) w += pick(letters);
      add(rand() < 0.1 ? w[0]!.toUpperCase() + w.slice(1) : w);
    } else if (r < 0.9) {
      const a = 0x4e00 + Math.floor(rand() * 20000);
      const b = 0x4e00 + Math.floor(rand() * 20000);
      add(String.fromCodePoint(a, b));
    } else if (r < 0.97) {
      add(pick(punct) + pick(punct) + (rand() < 0.5 ? pick(punct) : ""));
    } else {
      add(SPACE.repeat(1 + Math.floor(rand() * 15)));
    }
  }
  return vocab;
}

function percentile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
}
const round = (x: number, digits = 3) => Math.round(x * 10 ** digits) / 10 ** digits;

/** Per-mask times along random walks of `steps` tokens over each format. */
async function maskCost(steps: number): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  const vocab = syntheticVocab(ERNIE_VOCAB);
  const tok = ModelTokenizer.fromObjects(tokenizerJson(vocab, []));
  const tLoad = performance.now();
  const grammars = await GrammarEngine.create(tok, ERNIE_VOCAB, tok.eosTokenIds);
  const tInfo = performance.now();
  const out: Record<string, unknown> = {
    vocab: vocab.length,
    tokenizerLoadMs: round(tLoad - t0, 1),
    describeToXgrammarMs: round(tInfo - tLoad, 1),
    formats: {} as Record<string, unknown>,
  };
  const formats: Record<string, ResponseFormat> = {
    json_object: CORPUS.json_object!,
    flat: CORPUS.flat!,
    nested: CORPUS.nested!,
    enums: CORPUS.enums!,
    strings: CORPUS.strings!,
  };
  const rand = lcg(5);
  for (const [name, format] of Object.entries(formats)) {
    const tc = performance.now();
    const first = await grammars.matcher(format);
    const compileMs = performance.now() - tc;
    first.dispose();
    const times: number[] = [];
    const mask = new Uint32Array(grammars.maskWords);
    let m = await grammars.matcher(format);
    let documents = 0;
    const stops = new Set(grammars.stopTokenIds);
    while (times.length < steps) {
      const t = performance.now();
      await m.fillMask(mask);
      times.push(performance.now() - t);
      const allowed: number[] = [];
      let stop = false;
      for (let id = 0; id < ERNIE_VOCAB; id++) {
        if (!maskAllows(mask, id)) continue;
        if (stops.has(id)) stop = true;
        else allowed.push(id);
      }
      if (stop && (allowed.length === 0 || rand() < 0.3)) {
        m.dispose();
        m = await grammars.matcher(format);
        documents++;
        continue;
      }
      m.accept(allowed[Math.floor(rand() * allowed.length)]!);
    }
    m.dispose();
    times.sort((a, b) => a - b);
    (out.formats as Record<string, unknown>)[name] = {
      compileMs: round(compileMs, 1),
      masks: times.length,
      documents,
      maskMsMean: round(times.reduce((a, b) => a + b, 0) / times.length),
      maskMsP50: round(percentile(times, 0.5)),
      maskMsP95: round(percentile(times, 0.95)),
      maskMsMax: round(times[times.length - 1]!),
    };
  }
  await grammars.dispose();
  return out;
}

/** One batch of `seqs` seeded requests with `format` (or none), timed. */
async function batch(
  backend: ApiBackend,
  engine: Engine,
  seqs: number,
  maxTokens: number,
  format: ResponseFormat | undefined,
  tag: string,
): Promise<Record<string, unknown>> {
  const rf = format === undefined
    ? {}
    : format.type === "json_object"
    ? { response_format: { type: "json_object" } }
    : {
      response_format: { type: "json_schema", json_schema: { name: "b", schema: format.schema } },
    };
  const body = (i: number) => ({
    messages: [{ role: "user", content: `${tag} request ${i}: label this.` }],
    temperature: 1,
    seed: i,
    max_tokens: maxTokens,
    ...rf,
  });
  const ctx = { customId: tag, signal: new AbortController().signal };
  const before = { ...engine.stats };
  const masksBefore = { ...engine.grammarStats };
  const t0 = performance.now();
  const res = await Promise.all(
    Array.from({ length: seqs }, (_, i) => backend.run("/v1/chat/completions", body(i), ctx)),
  ) as ChatCompletion[];
  const seconds = (performance.now() - t0) / 1000;
  const tokens = res.reduce((s, r) => s + r.usage.completion_tokens, 0);
  const steps = engine.stats.steps - before.steps;
  return {
    seqs,
    seconds: round(seconds, 2),
    generatedTokens: tokens,
    tokensPerSecond: round(tokens / seconds, 1),
    steps,
    msPerStep: round((seconds * 1000) / steps, 2),
    stopped: res.filter((r) => r.choices[0]!.finish_reason === "stop").length,
    maskMs: round(engine.grammarStats.maskMs - masksBefore.maskMs, 1),
    masks: engine.grammarStats.masks - masksBefore.masks,
  };
}

const results: Record<string, unknown> = { date: new Date().toISOString() };
console.error("mask cost at a 103,424-piece vocabulary …");
results.maskCost = await maskCost(Number(flags["walk-steps"]));
console.error(`batch throughput on ${flags.model} …`);
const engine = await Engine.load(flags.model!, {
  backend: flags.backend as "auto" | "webgpu" | "wasm",
});
const backend = new ApiBackend(engine);
results.model = flags.model;
results.backend = flags.backend;
results.vocabSize = engine.config.vocabSize;
const seqs = Number(flags.seqs);
const maxTokens = Number(flags["max-tokens"]);
await batch(backend, engine, 4, 4, CORPUS.enums, "warmup"); // compiles, warms the kernels
results.throughput = {
  free: await batch(backend, engine, seqs, maxTokens, undefined, "free"),
  jsonSchema: await batch(backend, engine, seqs, maxTokens, CORPUS.nested, "schema"),
  jsonObject: await batch(backend, engine, seqs, maxTokens, CORPUS.json_object, "object"),
  freeAgain: await batch(backend, engine, seqs, maxTokens, undefined, "free2"),
};
await engine.close();
console.log(JSON.stringify(results, null, 2));
