/**
 * The command line as a user runs it: help, usage errors, and a real batch on
 * the shipped model in a child process.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { ignoreWithoutGpu } from "./_gpu.ts";
import { runCli } from "./_cli.ts";

const cli = runCli;

Deno.test("--help prints every flag with its default and exits 0", async () => {
  const { code, stdout } = await cli(["run-batch", "--help"]);
  assertEquals(code, 0);
  for (
    const flag of [
      "--model",
      "-i, --input-file",
      "-o, --output-file",
      "--max-num-seqs",
      "--resume",
      "--on-invalid",
    ]
  ) {
    assert(stdout.includes(flag), `help mentions ${flag}`);
  }
  assertMatch(stdout, /--max-num-seqs N +.*\(default: 64\)/);
  assertMatch(stdout, /--order completion\|input +.*\(default: completion\)/);
});

Deno.test("an unknown flag is a usage error with exit status 2", async () => {
  const { code, stderr } = await cli([
    "run-batch",
    "--model",
    "m",
    "-i",
    "a",
    "-o",
    "b",
    "--frobnicate",
  ]);
  assertEquals(code, 2);
  assertMatch(stderr, /frobnicate/);
  assertMatch(stderr, /Usage:/);
});

Deno.test("a missing required flag is a usage error with exit status 2", async () => {
  const { code, stderr } = await cli(["run-batch", "-i", "a.jsonl", "-o", "b.jsonl"]);
  assertEquals(code, 2);
  assertMatch(stderr, /missing required flag --model/);
  const bad = await cli([
    "run-batch",
    "--model",
    "m",
    "-i",
    "a",
    "-o",
    "b",
    "--max-num-seqs",
    "zero",
  ]);
  assertEquals(bad.code, 2);
  assertMatch(bad.stderr, /--max-num-seqs must be a positive integer/);
});

Deno.test("an unknown command is a usage error", async () => {
  const { code, stderr } = await cli(["frobnicate"]);
  assertEquals(code, 2);
  assertMatch(stderr, /unknown command "frobnicate"/);
});

Deno.test("a missing model directory is a clear error naming it", async () => {
  const dir = await Deno.makeTempDir();
  const input = join(dir, "in.jsonl");
  await Deno.writeTextFile(input, "");
  const { code, stderr } = await cli([
    "run-batch",
    "--model",
    join(dir, "nope"),
    "-i",
    input,
    "-o",
    join(dir, "o.jsonl"),
    "-q",
  ]);
  assertEquals(code, 1);
  assertMatch(stderr, /nope/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test({
  name: "run-batch answers every line of a real batch on the shipped model",
  ignore: ignoreWithoutGpu,
}, async () => {
  const dir = await Deno.makeTempDir();
  const input = join(dir, "in.jsonl");
  const output = join(dir, "out.jsonl");
  const lines = [
    {
      custom_id: "a",
      method: "POST",
      url: "/v1/chat/completions",
      body: { messages: [{ role: "user", content: "hi" }], max_tokens: 5, temperature: 0 },
    },
    {
      custom_id: "b",
      method: "POST",
      url: "/v1/chat/completions",
      body: { messages: [{ role: "user", content: "hello there" }], max_tokens: 7, seed: 3 },
    },
    {
      custom_id: "c",
      method: "POST",
      url: "/v1/completions",
      body: { prompt: "Once upon", max_tokens: 4 },
    },
    { custom_id: "d", method: "POST", url: "/v1/embeddings", body: { input: "embed me" } },
    { custom_id: "e", method: "POST", url: "/v1/unknown", body: {} },
  ].map((l) => JSON.stringify(l));
  await Deno.writeTextFile(
    input,
    [...lines.slice(0, 2), "{not json", "", ...lines.slice(2)].join("\n") + "\n",
  );
  const { code, stderr } = await cli([
    "run-batch",
    "--model",
    "models/ernie-tiny",
    "-i",
    input,
    "-o",
    output,
  ]);
  assertEquals(code, 0, stderr);
  assertMatch(stderr, /5\/7 succeeded|succeeded/);
  const answers = (await Deno.readTextFile(output)).trim().split("\n").map((l) => JSON.parse(l));
  assertEquals(answers.length, 6);
  const byId = new Map(answers.map((a) => [a.custom_id, a]));
  const chat = byId.get("a");
  assertEquals(chat.response.status_code, 200);
  assertEquals(chat.error, null);
  assertMatch(chat.id, /^batch_req_[0-9a-f]{32}$/);
  const body = chat.response.body;
  assertEquals(body.object, "chat.completion");
  assertEquals(body.model, "ernie-tiny");
  assertEquals(body.choices[0].message.role, "assistant");
  assertEquals(typeof body.choices[0].message.content, "string");
  assert(["stop", "length"].includes(body.choices[0].finish_reason));
  assertEquals(body.usage.total_tokens, body.usage.prompt_tokens + body.usage.completion_tokens);
  assert(body.usage.completion_tokens <= 5);
  assertEquals(typeof body.created, "number");
  assertEquals(byId.get("c").response.body.object, "text_completion");
  assertEquals(byId.get("d").response.body.data[0].embedding.length, 64);
  assertEquals(byId.get("e").response.status_code, 400);
  const bad = answers.find((a) => a.custom_id === null);
  assertEquals(bad.response.status_code, 400);
  assertMatch(bad.response.body.error.message, /line 3/);
  // The output exists now: a second run refuses to overwrite it.
  const again = await cli([
    "run-batch",
    "--model",
    "models/ernie-tiny",
    "-i",
    input,
    "-o",
    output,
    "-q",
  ]);
  assertEquals(again.code, 1);
  assertMatch(again.stderr, /--overwrite|--resume/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("--validate-only checks the file without loading the model onto the GPU", async () => {
  const dir = await Deno.makeTempDir();
  const input = join(dir, "in.jsonl");
  await Deno.writeTextFile(
    input,
    [
      JSON.stringify({
        custom_id: "a",
        method: "POST",
        url: "/v1/chat/completions",
        body: { messages: [{ role: "user", content: "x" }] },
      }),
      JSON.stringify({
        custom_id: "a",
        method: "POST",
        url: "/v1/chat/completions",
        body: { messages: [] },
      }),
      JSON.stringify({ custom_id: "b", method: "GET", url: "/v1/chat/completions", body: {} }),
    ].join("\n"),
  );
  const { code, stderr } = await cli([
    "run-batch",
    "--model",
    "models/ernie-tiny",
    "-i",
    input,
    "-o",
    join(dir, "o.jsonl"),
    "--validate-only",
  ]);
  assertEquals(code, 1, "invalid lines make --validate-only exit 1");
  assertMatch(stderr, /line 2/);
  assertMatch(stderr, /line 3/);
  await Deno.remove(dir, { recursive: true });
});
