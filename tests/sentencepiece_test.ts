import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import {
  ModelType,
  parseSentencePieceModel,
  PieceType,
  type SentencePiece,
  type SentencePieceModel,
  sentencePieceToTokenizerJson,
} from "../engine/loader/sentencepiece.ts";
import { ProtoReader } from "../engine/loader/protobuf.ts";
import { ModelTokenizer } from "../engine/loader/tokenizer.ts";
import { CORPUS as TRAINING_TEXT } from "../tools/_corpus.ts";
import { encodeSentencePieceModel, fixtureSentencePieceModel } from "../tools/_sentencepiece.ts";
import { SPECIAL_TOKENS } from "../tools/_bpe.ts";

const TINY = new URL("../models/ernie-tiny", import.meta.url).pathname;
const PADDLE = new URL("../models/ernie-tiny-paddle", import.meta.url).pathname;
/** The parts of a BPE `tokenizer.json` the tests look into. */
type BpeJson = Record<string, unknown> & {
  model: Record<string, unknown> & { vocab: Record<string, number>; merges: [string, string][] };
};
const tinyJson = async (): Promise<BpeJson> =>
  JSON.parse(await Deno.readTextFile(`${TINY}/tokenizer.json`));

/** Strings both tokenizers must agree on, encoding and decoding. */
const CORPUS = [
  "",
  "hello",
  "hello world",
  "This is a test",
  "The quick brown fox jumps over the lazy dog. It's 3:15pm, isn't it?",
  "User: Hey, are you conscious? Can you talk to me?\nAssistant: ",
  "naïve café, résumé, Ångström, façade",
  "中文分词测试，日本語のテキスト、한국어",
  "Emoji: 👋🏽 🚀! 👨‍👩‍👧",
  "   leading and trailing   ",
  "a  b   c    d",
  "tabs\tand\nnewlines\r\n\n\ttogether",
  "12345",
  "Numbers 3.14159, 2024-01-01 and 1,000,000",
  "<unk><s></s>",
  ...SPECIAL_TOKENS,
  "<|begin_of_sentence|>User: hi\nAssistant: hello<|end_of_sentence|>",
  "text around <mask:1> a mask and <|LOC_0|> a location",
  "symbols ~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./ and ▁ itself",
  "\u0000\u0007\u007f control bytes",
  ...TRAINING_TEXT.split("\n"),
];

Deno.test("ProtoReader decodes varints, length-delimited fields and floats, and skips the rest", () => {
  const bytes = new Uint8Array([
    0x08,
    0x96,
    0x01, // field 1, varint 150
    0x12,
    0x02,
    0x68,
    0x69, // field 2, "hi"
    0x1d,
    0x00,
    0x00,
    0xc0,
    0x3f, // field 3, float 1.5
    0x49,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8, // field 9, fixed64 (unknown)
    0x52,
    0x03,
    0x01,
    0x02,
    0x03, // field 10, bytes (unknown)
    0x5b,
    0x08,
    0x01,
    0x5c, // field 11, a group holding field 1 = 1 (unknown)
    0x61,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0, // field 12, fixed64 (unknown)
    0x6d,
    0,
    0,
    0,
    0, // field 13, fixed32 (unknown)
    0x20,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0x01, // field 4, int32 -1
    0xc0,
    0x0c,
    0x01, // field 200, varint 1 (an extension)
  ]);
  const r = new ProtoReader(bytes);
  const seen: [number, unknown][] = [];
  for (let f = r.next(); f !== null; f = r.next()) {
    if (f.number === 1) seen.push([1, r.varint()]);
    else if (f.number === 2) seen.push([2, r.string()]);
    else if (f.number === 3) seen.push([3, r.float32()]);
    else if (f.number === 4) seen.push([4, r.int32()]);
    else if (f.number === 200) seen.push([200, r.bool()]);
    else r.skip(f);
  }
  assertEquals(seen, [[1, 150], [2, "hi"], [3, 1.5], [4, -1], [200, true]]);
});

Deno.test("ProtoReader reports truncated data with its offset", () => {
  const r = new ProtoReader(new Uint8Array([0x12, 0x05, 0x68]));
  const f = r.next();
  assertEquals(f, { number: 2, wireType: 2 });
  assertThrows(() => r.string(), /truncated \(at byte 2\)/);
  assertThrows(() => new ProtoReader(new Uint8Array([0x80])).varint());
  const odd = new ProtoReader(new Uint8Array([0x0e, 0x00])); // field 1, wire type 6
  assertThrows(() => odd.skip(odd.next()!), /unknown wire type 6/);
});

Deno.test("parseSentencePieceModel reads a hand-built ModelProto and fills proto2 defaults", () => {
  const piece = (text: string, score: number[], type?: number) => [
    ...[0x0a, text.length, ...new TextEncoder().encode(text)],
    ...[0x15, ...score],
    ...(type === undefined ? [] : [0x18, type]),
  ];
  const pieces = [piece("<unk>", [0, 0, 0, 0], 2), piece("ab", [0, 0, 0x80, 0xbf])];
  const bytes = new Uint8Array([
    ...pieces.flatMap((p) => [0x0a, p.length, ...p]),
    0x22,
    0x02,
    0x0a,
    0x00, // self_test_data (field 4): skipped
  ]);
  const model = parseSentencePieceModel(bytes);
  assertEquals(model.pieces, [
    { piece: "<unk>", score: 0, type: PieceType.UNKNOWN },
    { piece: "ab", score: -1, type: PieceType.NORMAL },
  ]);
  assertEquals(model.trainerSpec, {
    modelType: ModelType.UNIGRAM,
    byteFallback: false,
    splitDigits: false,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
  });
  assertEquals(model.normalizerSpec.addDummyPrefix, true);
  assertEquals(model.normalizerSpec.removeExtraWhitespaces, true);
});

Deno.test("parseSentencePieceModel names the file when the bytes are not a model", () => {
  assertThrows(
    () => parseSentencePieceModel(new Uint8Array([0x0a, 0x10, 0x01]), "dir/tokenizer.model"),
    /Cannot parse "dir\/tokenizer\.model": not a SentencePiece model \(the message is truncated/,
  );
});

Deno.test("encodeSentencePieceModel and parseSentencePieceModel round trip the fixture model", async () => {
  const model = fixtureSentencePieceModel(await tinyJson());
  assertEquals(parseSentencePieceModel(encodeSentencePieceModel(model)), model);
});

Deno.test("ernie-tiny-paddle ships tokenizer.model (no tokenizer.json) with ernie-tiny's vocabulary", async () => {
  await assertRejects(() => Deno.stat(`${PADDLE}/tokenizer.json`), /No such file|not found/i);
  const json = await tinyJson();
  const model = parseSentencePieceModel(await Deno.readFile(`${PADDLE}/tokenizer.model`));
  assertEquals(model, fixtureSentencePieceModel(json));
  const vocab = Object.fromEntries(model.pieces.map((p, id) => [p.piece, id]));
  assertEquals(vocab, json.model.vocab);
  assertEquals(model.pieces[23], { piece: "<0x0A>", score: 0, type: PieceType.BYTE });
});

Deno.test("the converted tokenizer.json matches ernie-tiny's, merges aside", async () => {
  const json = await tinyJson();
  const model = parseSentencePieceModel(await Deno.readFile(`${PADDLE}/tokenizer.model`));
  const converted = sentencePieceToTokenizerJson(model) as BpeJson;
  for (const key of ["added_tokens", "normalizer", "pre_tokenizer", "decoder"]) {
    assertEquals(converted[key], json[key], key);
  }
  const { merges, ...rest } = converted.model;
  const { merges: trained, ...expected } = json.model;
  assertEquals(rest, expected);
  // Every trained merge is derived, in the same order (the derived list may
  // also hold other splits of a merged piece, which never change a result).
  const position = new Map(merges.map((m, i) => [m.join(" "), i]));
  let last = -1;
  for (const m of trained) {
    const at = position.get(m.join(" "));
    assert(at !== undefined && at > last, `merge ${m} missing or out of order`);
    last = at;
  }
});

Deno.test("tokenizer.model loads through ModelTokenizer and encodes and decodes as tokenizer.json does", async () => {
  const reference = await ModelTokenizer.load(TINY);
  const sp = await ModelTokenizer.load(PADDLE);
  assertEquals(sp.vocabSize, reference.vocabSize);
  assertEquals(sp.eosTokenIds, reference.eosTokenIds);
  assertEquals([...sp.specialTokenIds], [...reference.specialTokenIds]);
  for (const text of CORPUS) {
    const ids = reference.encode(text);
    assertEquals(sp.encode(text), ids, JSON.stringify(text));
    assertEquals(sp.encodePlain(text), reference.encodePlain(text), JSON.stringify(text));
    for (const skipSpecialTokens of [true, false]) {
      assertEquals(
        sp.decode(ids, { skipSpecialTokens }),
        reference.decode(ids, { skipSpecialTokens }),
        JSON.stringify(text),
      );
    }
    // A literal "▁" reads as a space, as in SentencePiece; everything else round trips.
    assertEquals(sp.decode(ids, { skipSpecialTokens: false }), text.replaceAll("▁", " "));
  }
  const chat = [{ role: "user", content: "Hey <|end_of_sentence|> you\n" }];
  assertEquals(sp.encodeChat(chat), reference.encodeChat(chat));
  for (let id = 0; id < reference.vocabSize; id++) {
    assertEquals(sp.tokenBytes(id), reference.tokenBytes(id), `token ${id}`);
  }
});

Deno.test("tokenizer.model keeps ERNIE's rules: byte fallback ids, digits one per token, no dummy prefix", async () => {
  const tok = await ModelTokenizer.load(PADDLE);
  assertEquals(tok.encode("\n"), [23]);
  assertEquals(tok.encode("\t"), [22]);
  assertEquals(tok.encode("12345").map((id) => tok.decode([id])), ["1", "2", "3", "4", "5"]);
  SPECIAL_TOKENS.forEach((s, id) => assertEquals(tok.encode(s), [id], s));
  const hello = tok.encode("hello");
  assert(!tok.tokenText(hello[0]!).startsWith(" "), "no dummy prefix on the first word");
  assert(tok.tokenText(tok.encode(" hello")[0]!).startsWith(" "), "a real space is kept");
  assertEquals(tok.decode(hello), "hello");
});

/** A small model: specials, a space, letters and merged pieces with `scores`. */
function smallModel(
  modelType: number,
  normalizer: Partial<SentencePieceModel["normalizerSpec"]>,
  pieces: readonly [string, number][],
): SentencePieceModel {
  const all: SentencePiece[] = [
    { piece: "<unk>", score: 0, type: PieceType.UNKNOWN },
    { piece: "<s>", score: 0, type: PieceType.CONTROL },
    { piece: "</s>", score: 0, type: PieceType.CONTROL },
    ...pieces.map(([piece, score]) => ({ piece, score, type: PieceType.NORMAL })),
  ];
  return parseSentencePieceModel(encodeSentencePieceModel({
    pieces: all,
    trainerSpec: {
      modelType,
      byteFallback: false,
      splitDigits: false,
      unkId: 0,
      bosId: 1,
      eosId: 2,
      padId: -1,
    },
    normalizerSpec: {
      name: "identity",
      precompiledCharsmap: new Uint8Array(0),
      addDummyPrefix: true,
      removeExtraWhitespaces: true,
      escapeWhitespaces: true,
      ...normalizer,
    },
  }));
}

const pieceTexts = (tok: ModelTokenizer, ids: number[]) => ids.map((id) => tok.tokenText(id));

Deno.test("a BPE model with a dummy prefix and extra-whitespace removal normalizes as SentencePiece", () => {
  const model = smallModel(ModelType.BPE, {}, [
    ["▁", 0],
    ["a", 0],
    ["b", 0],
    ["▁a", -1],
    ["▁b", -2],
    ["ab", -3],
    ["▁ab", -4],
  ]);
  const tok = ModelTokenizer.fromObjects(sentencePieceToTokenizerJson(model));
  const ids = tok.encode("  ab  b a ");
  assertEquals(ids.map((id) => model.pieces[id]?.piece), ["▁ab", "▁b", "▁a"]);
  assertEquals(tok.decode(ids), "ab b a");
  assertEquals(pieceTexts(tok, tok.encode("ab")), [" ab"]);
});

Deno.test("a Unigram model converts to a Unigram tokenizer.json that picks the best-scoring split", () => {
  const model = smallModel(ModelType.UNIGRAM, {}, [
    ["▁", -2],
    ["a", -3],
    ["b", -3],
    ["▁a", -2],
    ["ab", -1],
    ["▁ab", -8],
  ]);
  const json = sentencePieceToTokenizerJson(model);
  assertEquals((json["model"] as { type: string }).type, "Unigram");
  const tok = ModelTokenizer.fromObjects(json);
  // "▁ab": "▁" + "ab" scores -3, better than "▁ab" (-8) or "▁a" + "b" (-5).
  assertEquals(tok.encode("ab").map((id) => model.pieces[id]?.piece), ["▁", "ab"]);
  assertEquals(tok.decode(tok.encode("ab ab")), "ab ab");
});

Deno.test("WORD and CHAR models are a clear error naming the file", () => {
  for (const type of [ModelType.WORD, ModelType.CHAR]) {
    const model = smallModel(type, {}, [["a", 0]]);
    assertThrows(
      () => sentencePieceToTokenizerJson(model, "x/tokenizer.model"),
      /Cannot convert "x\/tokenizer\.model": model type (WORD|CHAR) is not supported/,
    );
  }
});

Deno.test("ModelTokenizer.load names a corrupt tokenizer.model", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/tokenizer.model`, new Uint8Array([0x0a, 0x7f]));
    await assertRejects(
      () => ModelTokenizer.load(dir),
      new RegExp(`Cannot parse "${dir}/tokenizer\\.model": not a SentencePiece model`),
    );
    await Deno.remove(`${dir}/tokenizer.model`);
    await assertRejects(
      () => ModelTokenizer.load(dir),
      /neither tokenizer\.json nor tokenizer\.model/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
