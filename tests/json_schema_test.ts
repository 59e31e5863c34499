/**
 * The JSON-schema grammar and its token masks, without a model: random walks
 * over the masks of the shipped tokenizer (and of one whose pieces cross JSON
 * structure) must only ever produce text whose "may stop here" agrees with
 * ajv; bounded numbers are checked string by string against ajv; unsupported
 * keywords are errors that name them.
 */
import { assert, assertEquals } from "./_assert.ts";
import { GrammarEngine, maskAllows } from "../engine/grammar.ts";
import { ModelTokenizer } from "../engine/loader/tokenizer.ts";
import { SchemaError, schemaToEbnf } from "../engine/json_schema.ts";
import { toResponseFormat } from "../api/response_format.ts";
import { RequestError } from "../engine/types.ts";
import {
  acceptsDocument,
  byteTokens,
  lcg,
  parseComplete,
  randomWalk,
  validatorFor,
} from "./_grammar_walk.ts";
import { buildVocab, BYTE_BASE, SPACE, tokenizerJson } from "../tools/_bpe.ts";
import { CORPUS, schema } from "./_schema_corpus.ts";

const tok = await ModelTokenizer.load("models/ernie-tiny");
const grammars = await GrammarEngine.create(tok, 2240, tok.eosTokenIds);

/** The error `fn` throws, which must be a `type`. */
function thrown<E extends Error>(fn: () => unknown, type: new (...a: never[]) => E): E {
  try {
    fn();
  } catch (e) {
    assert(e instanceof type, `expected ${type.name}, got ${e}`);
    return e;
  }
  throw new Error(`expected ${type.name}, nothing was thrown`);
}

for (const [name, format] of Object.entries(CORPUS)) {
  Deno.test(`random walks over "${name}" only stop on documents that parse and validate`, async () => {
    const valid = validatorFor(format);
    const rand = lcg(name.length * 7919);
    let finished = 0;
    for (let walk = 0; walk < 12; walk++) {
      const w = await randomWalk(grammars, tok, format, valid, rand, 160);
      if (!w.finished) continue;
      finished++;
      const parsed = parseComplete(new TextEncoder().encode(w.text));
      assert(parsed !== undefined && valid(parsed.value), `${name}: ${w.text}`);
    }
    assert(finished > 0, `${name}: no walk finished`);
  });
}

Deno.test("the compiled grammar of a repeated format is reused", async () => {
  const before = grammars.compiledCount;
  const f = schema({ type: "object", properties: { q: { type: "boolean" } }, required: ["q"] });
  const [a, b] = await Promise.all([grammars.matcher(f), grammars.matcher({ ...f })]);
  a.dispose();
  b.dispose();
  assertEquals(grammars.compiledCount, before + 1);
});

Deno.test("documents spelled in byte-fallback pieces are accepted, and end only when complete", async () => {
  const f = CORPUS.enums!;
  const doc = `{"label": "neutral", "confident": false, "level": 2}`;
  assert(await acceptsDocument(grammars, f, byteTokens(tok, doc)));
  assert(!(await acceptsDocument(grammars, f, byteTokens(tok, doc.slice(0, -1)))));
  assert(!(await acceptsDocument(grammars, f, byteTokens(tok, doc.replace("2", "4")))));
  // Non-ASCII text, byte by byte, inside a string.
  const s = schema({ type: "string", maxLength: 4 });
  assert(await acceptsDocument(grammars, s, byteTokens(tok, `"é😀"`)));
  assert(!(await acceptsDocument(grammars, s, byteTokens(tok, `"ééééé"`))));
  // Byte pieces that would make the text invalid UTF-8 are never taken (xgrammar alone takes
  // overlong forms, encoded surrogates and code points past U+10FFFF).
  const quote = byteTokens(tok, '"')[0]!;
  for (
    const bad of [[0xe0, 0x80, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xc0, 0x80], [
      0x91,
    ], [0xe4]]
  ) {
    const ids = [quote, ...bad.map((b) => BYTE_BASE + b), quote];
    assert(!(await acceptsDocument(grammars, s, ids)), `accepted bytes ${bad}`);
  }
  // And the masks never offer them: after `"` no stray continuation byte or C0; after E0 only A0..BF.
  const m = await grammars.matcher(s);
  try {
    const mask = new Uint32Array(grammars.maskWords);
    m.accept(quote);
    await m.fillMask(mask);
    assert(!maskAllows(mask, BYTE_BASE + 0x91) && !maskAllows(mask, BYTE_BASE + 0xc0));
    assert(maskAllows(mask, BYTE_BASE + 0xc3) && maskAllows(mask, BYTE_BASE + 0xe0));
    m.accept(BYTE_BASE + 0xe0);
    await m.fillMask(mask);
    assert(!maskAllows(mask, BYTE_BASE + 0x80) && !maskAllows(mask, quote));
    assert(maskAllows(mask, BYTE_BASE + 0xa0));
  } finally {
    m.dispose();
  }
  assert(
    await acceptsDocument(
      grammars,
      s,
      [quote, 0xe4, 0xb8, 0xad, 0x22].map((b, i) => i === 0 ? b : BYTE_BASE + b),
    ),
  );
});

Deno.test("whitespace between JSON tokens is bounded", async () => {
  const f = CORPUS.enums!;
  const spaced = (n: number) =>
    `{${" ".repeat(n)}"label": "neutral", "confident": true, "level": 1}`;
  assert(await acceptsDocument(grammars, f, byteTokens(tok, spaced(4))));
  assert(!(await acceptsDocument(grammars, f, byteTokens(tok, spaced(5)))));
  // Nothing before or after the document.
  assert(!(await acceptsDocument(grammars, f, byteTokens(tok, " " + spaced(0)))));
  assert(!(await acceptsDocument(grammars, f, byteTokens(tok, spaced(0) + "\n"))));
});

/** Every decimal in [-4, 4] with up to 2 decimals, and a few odd spellings. */
function numberCandidates(): string[] {
  const out = [
    "-0",
    "0.0",
    "00",
    "01",
    "1.",
    ".5",
    "1e0",
    "-",
    "7.250",
    "7.2500001",
    "-2.50",
    "-2.500001",
  ];
  for (let i = -400; i <= 400; i++) {
    const v = i / 100;
    out.push(String(v), v.toFixed(2));
    if (Number.isInteger(v)) out.push(`${v}.0`);
  }
  for (const big of ["100", "100.5", "100.50", "100.4999", "101", "1000000", "99999"]) {
    out.push(big);
  }
  return [...new Set(out)];
}

Deno.test("bounded numbers: the grammar accepts exactly the canonical decimals ajv accepts", async () => {
  const cases = [
    { type: "number", minimum: -2.5, maximum: 7.25 },
    { type: "number", exclusiveMinimum: 0, exclusiveMaximum: 1 },
    { type: "number", minimum: 0, maximum: 1 },
    { type: "number", exclusiveMinimum: -1.5, maximum: 0 },
    { type: "number", minimum: 100.5 },
    { type: "number", maximum: -0.25 },
    { type: "integer", minimum: -3, maximum: 12 },
    { type: "integer", exclusiveMinimum: 0.5, exclusiveMaximum: 3 },
    { type: "integer", minimum: -1000, maximum: -7 },
  ];
  for (const s of cases) {
    const canonical = s.type === "integer"
      ? /^-?(0|[1-9][0-9]*)$/
      : /^-?(0|[1-9][0-9]*)(\.[0-9]{1,6})?$/;
    const f = schema(s);
    const valid = validatorFor(f);
    for (const text of numberCandidates()) {
      const accepted = await acceptsDocument(grammars, f, byteTokens(tok, text));
      const parsed = parseComplete(new TextEncoder().encode(text));
      const ok = parsed !== undefined && valid(parsed.value);
      if (accepted) assert(ok, `${JSON.stringify(s)} accepted ${text}, which ajv rejects`);
      const negZero = /^-0(\.0*)?$/.test(text);
      if (ok && canonical.test(text) && !negZero) {
        assert(accepted, `${JSON.stringify(s)} rejected ${text}, which ajv accepts`);
      }
    }
  }
});

Deno.test("pieces that cross JSON structure are allowed where their whole text fits", async () => {
  const pieces = ['{"', '":', '",', '"}', "}]", `${SPACE}"`, '":"', "true}", "é", "ab"];
  const vocab = [...buildVocab([]), ...pieces];
  const custom = ModelTokenizer.fromObjects(tokenizerJson(vocab, []));
  const g = await GrammarEngine.create(custom, vocab.length, custom.eosTokenIds);
  try {
    const f = schema({
      type: "array",
      items: { type: "object", properties: { k: { type: "string" } }, required: ["k"] },
    });
    const id = (p: string) => vocab.indexOf(p);
    const ids = ["[", '{"', "k", '":"', "a", "b", "é", '"}', "]"].map(id);
    assert(ids.every((i) => i >= 0));
    assert(await acceptsDocument(g, f, ids));
    // `true}` never fits here; `":` may not follow `{"k"` with the value's quote still missing.
    assert(!(await acceptsDocument(g, f, ["[", '{"', "k", '":', "true}"].map(id))));
    const valid = validatorFor(f);
    const rand = lcg(99);
    for (let walk = 0; walk < 10; walk++) {
      const w = await randomWalk(g, custom, f, valid, rand, 120);
      if (w.finished) assert(valid(JSON.parse(w.text)), w.text);
    }
  } finally {
    await g.dispose();
  }
});

Deno.test("unsupported schema keywords are errors that name the keyword", () => {
  const cases: [unknown, string][] = [
    [{ type: "number", multipleOf: 2 }, "multipleOf"],
    [{ type: "string", pattern: "^a+$" }, "pattern"],
    [{ type: "object", minProperties: 1 }, "minProperties"],
    [{ oneOf: [{ type: "string" }] }, "oneOf"],
    [{ allOf: [{ type: "string" }] }, "allOf"],
    [{ not: { type: "string" } }, "not"],
    [{ type: "array", uniqueItems: true }, "uniqueItems"],
    [{ type: "array", prefixItems: [{ type: "string" }] }, "prefixItems"],
    [{ type: "string", format: "email" }, "format"],
    [{ type: "object", properties: { a: { type: "integer", minimum: 1e-9 } } }, "minimum"],
    [{ $ref: "https://example.com/s.json" }, "$ref"],
    [{ type: "object", properties: {}, required: ["x"] }, "required"],
    [{ type: "string", maxLength: 1000 }, "maxLength"],
  ];
  for (const [s, keyword] of cases) {
    const e = thrown(() => schemaToEbnf(s), SchemaError);
    assertEquals(e.keyword, keyword, JSON.stringify(s));
    assert(e.message.includes(keyword), e.message);
  }
});

Deno.test("response_format: a 400 that names the keyword and where it is", () => {
  const e = thrown(
    () =>
      toResponseFormat({
        type: "json_schema",
        json_schema: {
          name: "x",
          schema: { type: "object", properties: { n: { type: "number", multipleOf: 3 } } },
        },
      }, {}),
    RequestError,
  );
  assertEquals(e.status, 400);
  assert(
    e.message.startsWith('response_format.json_schema.schema/properties/n: keyword "multipleOf"'),
    e.message,
  );
  const stop = thrown(
    () => toResponseFormat({ type: "json_object" }, { stop: ["}"] }),
    RequestError,
  );
  assertEquals(stop.param, "stop");
  assertEquals(toResponseFormat({ type: "text" }, { stop: ["x"] }), undefined);
});

Deno.test("special tokens are never allowed inside a document, even where their text would fit", async () => {
  // Inside a free string "<|end_of_sentence|>" is valid text, but the token must not be.
  const f = schema({ type: "string" });
  const m = await grammars.matcher(f);
  try {
    m.accept(byteTokens(tok, '"')[0]!);
    const mask = new Uint32Array(grammars.maskWords);
    await m.fillMask(mask);
    for (const id of tok.specialTokenIds) {
      assert(((mask[id >>> 5]! >>> (id & 31)) & 1) === 0, `special id ${id} allowed in a string`);
    }
    for (let id = tok.vocabSize; id < 2240; id++) {
      assert(((mask[id >>> 5]! >>> (id & 31)) & 1) === 0, `padding id ${id} allowed`);
    }
  } finally {
    m.dispose();
  }
});

Deno.test({
  name: "grammar engine cleanup",
  fn: async () => {
    await grammars.dispose();
  },
});
