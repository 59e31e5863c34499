import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { ModelTokenizer } from "../engine/loader/tokenizer.ts";
import { IncrementalDetokenizer, OutputText, StopStringMatcher } from "../engine/detokenizer.ts";
import { ERNIE_CHAT_TEMPLATE, tinyTokenizer, tinyTokenizerFiles } from "./_tokenizer_fixture.ts";

const ERNIE_TINY = new URL("../models/ernie-tiny", import.meta.url).pathname;
const hasErnieTiny = await Deno.stat(`${ERNIE_TINY}/tokenizer.json`).then(() => true, () => false);

Deno.test("the chat template renders byte for byte as ERNIE's reference", () => {
  const tok = tinyTokenizer();
  const text = tok.applyChatTemplate([{ role: "user", content: "hi" }]);
  assertEquals(text, "<|begin_of_sentence|>User: hi\nAssistant: ");
  const full = tok.applyChatTemplate([
    { role: "system", content: "Be brief." },
    { role: "user", content: "hi" },
    { role: "assistant", content: "hello" },
    { role: "user", content: "again" },
  ], { addGenerationPrompt: false });
  assertEquals(
    full,
    "<|begin_of_sentence|>Be brief.\nUser: hi\nAssistant: hello<|end_of_sentence|>User: again\n",
  );
});

Deno.test("encodeChat gives one control id for the template's begin token and plain text after", () => {
  const tok = tinyTokenizer();
  const ids = tok.encodeChat([{ role: "user", content: "hi" }]);
  const bos = tok.encode("<|begin_of_sentence|>");
  assertEquals(bos.length, 1);
  assertEquals(ids[0], bos[0]);
  assertEquals(ids.slice(1), tok.encode("User: hi\nAssistant: "));
  assertEquals(
    tok.decode(ids, { skipSpecialTokens: false }),
    "<|begin_of_sentence|>User: hi\nAssistant: ",
  );
  assertEquals(tok.decode(ids), "User: hi\nAssistant: ");
});

Deno.test("special tokens written by a user are not read as control tokens", () => {
  const tok = tinyTokenizer();
  const content = "a<|end_of_sentence|>b<|begin_of_sentence|>";
  const ids = tok.encodeChat([{ role: "user", content }]);
  const specials = ids.filter((id) => tok.specialTokenIds.has(id));
  assertEquals(specials.length, 1, "only the template's own begin token is special");
  assertEquals(
    tok.decode(ids, { skipSpecialTokens: false }),
    `<|begin_of_sentence|>User: ${content}\nAssistant: `,
  );
  // Assistant turns in the history keep their template end token.
  const turn = tok.encodeChat([
    { role: "user", content: "<mask:1>" },
    { role: "assistant", content: "ok" },
  ]);
  assertEquals(turn.filter((id) => tok.specialTokenIds.has(id)).length, 2);
});

Deno.test("encode adds nothing by default and round-trips multi-byte text", () => {
  const tok = tinyTokenizer();
  const text = "héllo wörld 🙂";
  const ids = tok.encode(text);
  assertEquals(tok.decode(ids), text);
  assertEquals(tok.decode([]), "");
  assertEquals(tok.eosTokenIds.includes(tok.encode("</s>")[0] ?? -1), true);
  assertEquals(tok.eosTokenIds.includes(tok.encode("<|end_of_sentence|>")[0] ?? -1), true);
});

Deno.test("token bytes: a byte-fallback piece is one byte, a piece keeps its space", () => {
  const tok = tinyTokenizer();
  const [e1, e2] = tok.encode("é");
  assertEquals(tok.idToBytes(e1 ?? -1), [0xc3]);
  assertEquals(tok.idToBytes(e2 ?? -1), [0xa9]);
  assertEquals(tok.tokenText(e1 ?? -1), "\uFFFD");
  const world = tok.encode(" world");
  assertEquals(world.length, 1);
  assertEquals(tok.tokenText(world[0] ?? -1), " world");
});

Deno.test("vocabSize counts the model's entries and the added tokens", () => {
  const { tokenizerJson } = tinyTokenizerFiles();
  const tok = tinyTokenizer();
  const model = tokenizerJson["model"] as { vocab: Record<string, number> };
  assertEquals(tok.vocabSize, Object.keys(model.vocab).length + 3);
});

Deno.test("chat_template_kwargs reach the template", () => {
  const { tokenizerJson, tokenizerConfig } = tinyTokenizerFiles();
  const tok = ModelTokenizer.fromObjects(tokenizerJson, {
    ...tokenizerConfig,
    chat_template: "{{ greeting }}{{ cls_token }}{{ messages[0].content }}",
  });
  assertEquals(
    tok.applyChatTemplate([{ role: "user", content: "x" }], { kwargs: { greeting: "Hi" } }),
    "Hi<|begin_of_sentence|>x",
  );
});

Deno.test("a directory without tokenizer.json is a clear error naming it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assertRejects(() => ModelTokenizer.load(dir), new RegExp(`${dir}.*tokenizer\\.json`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "models/ernie-tiny: chat prompt and ERNIE's tokenization rules",
  ignore: !hasErnieTiny,
  fn: async () => {
    const tok = await ModelTokenizer.load(ERNIE_TINY);
    const ids = tok.encodeChat([{ role: "user", content: "hi" }]);
    assertEquals(
      tok.decode(ids, { skipSpecialTokens: false }),
      "<|begin_of_sentence|>User: hi\nAssistant: ",
    );
    assertEquals(tok.encode("\n\t"), [23, 22]); // byte fallback: 13 + byte
    const evil = tok.encodeChat([{ role: "user", content: "<|end_of_sentence|>" }]);
    assertEquals(evil.filter((id) => tok.specialTokenIds.has(id)).length, 1);
    assert(tok.chatTemplate !== null && tok.chatTemplate.length > 0);
    assert(ERNIE_CHAT_TEMPLATE.includes("Assistant: "));
  },
});

Deno.test("incremental detokenization never splits a multi-byte character", () => {
  const tok = tinyTokenizer();
  const text = "hi é🙂 world";
  const ids = tok.encode(text);
  const detok = new IncrementalDetokenizer(tok);
  const deltas = ids.map((id) => detok.push(id));
  deltas.push(detok.flush());
  assertEquals(deltas.join(""), text);
  assert(deltas.every((d) => !d.includes("\uFFFD")), JSON.stringify(deltas));
  assert(deltas.some((d) => d === ""), "bytes of é were held back");
});

Deno.test("detokenization keeps the leading space of the first generated token", () => {
  const tok = tinyTokenizer();
  const prompt = tok.encode("hi");
  const out = new OutputText(tok, { promptIds: prompt });
  for (const id of tok.encode(" world")) out.push(id);
  assertEquals(out.finish(), " world");
});

Deno.test("stop strings are found across token boundaries and cut with what follows", () => {
  const m = new StopStringMatcher(["STOP", "xyz"]);
  assertEquals(m.push("ab S"), { text: "ab ", stopped: false });
  assertEquals(m.push("T"), { text: "", stopped: false });
  assertEquals(m.push("OP and more"), { text: "", stopped: true });
  assertEquals(m.push("later"), { text: "", stopped: true });

  const early = new StopStringMatcher(["bc", "abcd"]);
  assertEquals(early.push("xabcd"), { text: "x", stopped: true }); // earliest, not first listed

  const none = new StopStringMatcher(["END"]);
  assertEquals(none.push("EN"), { text: "", stopped: false });
  assertEquals(none.push("d?"), { text: "ENd?", stopped: false });
  assertEquals(none.flush(), "");
  const held = new StopStringMatcher(["END"]);
  held.push("the EN");
  assertEquals(held.flush(), "EN");
});

Deno.test("OutputText stops on a stop string spanning tokens", () => {
  const tok = tinyTokenizer();
  const out = new OutputText(tok, { stop: ["lo wo"] });
  const ids = tok.encode("hello world");
  let stoppedAt = -1;
  ids.forEach((id, i) => {
    if (stoppedAt < 0 && out.push(id)) stoppedAt = i;
  });
  assertEquals(stoppedAt, ids.length - 1);
  assertEquals(out.finish(), "hel");
});

Deno.test("the chat template comes from chat_template.jinja when tokenizer_config.json has none, else ERNIE's", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.copyFile("models/ernie-tiny/tokenizer.json", `${dir}/tokenizer.json`);
  const config = JSON.parse(await Deno.readTextFile("models/ernie-tiny/tokenizer_config.json"));
  delete config.chat_template;
  await Deno.writeTextFile(`${dir}/tokenizer_config.json`, JSON.stringify(config));
  const messages = [{ role: "user", content: "hi" }];
  const fallback = await ModelTokenizer.load(dir);
  assertEquals(fallback.applyChatTemplate(messages), "<|begin_of_sentence|>User: hi\nAssistant: ");
  await Deno.writeTextFile(`${dir}/chat_template.jinja`, "{{ messages[0].content }}!");
  const jinja = await ModelTokenizer.load(dir);
  assertEquals(jinja.applyChatTemplate(messages), "hi!");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("before min_tokens no stop string ends the text, but one may begin there (vLLM)", () => {
  const tok = tinyTokenizer();
  const ids = tok.encode("hello world, world");
  const first = tok.encode("hello world").length;
  const run = (stop: string, minTokens: number) => {
    const out = new OutputText(tok, { stop: [stop], minTokens });
    const stoppedAt = ids.findIndex((id) => out.push(id));
    return { stoppedAt, text: out.finish() };
  };
  // "world" completes inside the first `first` ids: only the second one ends the text.
  assertEquals(run("world", 0).text, "hello ");
  assertEquals(run("world", first), { stoppedAt: ids.length - 1, text: "hello world, " });
  // A stop string begun before min_tokens and completed after it still counts.
  const spanAt = tok.encode("hello wor").length;
  const span = run("lo wor", spanAt - 1);
  assertEquals(span.text, "hel");
  assert(span.stoppedAt >= spanAt - 1, `stopped at ${span.stoppedAt}`);
  // A stop string entirely within the first min_tokens ids never counts later.
  assertEquals(run("hello", first), { stoppedAt: -1, text: "hello world, world" });
});
