/**
 * The command line as a user runs it: help, usage errors, and a real batch on
 * the shipped model in a child process.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { ignoreWithoutGpu } from "./_gpu.ts";
import { runCli } from "./_cli.ts";
import { parseRunBatch } from "../cli.ts";

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
  // Descriptions wrap: the default may sit on the flag's next line.
  assertMatch(stdout, /--order completion\|input +[^\n]*\n? +[^\n]*\(default: completion\)/);
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

Deno.test("--version prints the package version and exits 0", async () => {
  const version = (JSON.parse(await Deno.readTextFile("deno.json")) as { version: string }).version;
  for (const args of [["--version"], ["run-batch", "--version"]]) {
    const { code, stdout } = await cli(args);
    assertEquals(code, 0);
    assertMatch(stdout, new RegExp(`^batchwright ${version.replaceAll(".", "\\.")} `));
  }
});

Deno.test("--help groups the flags, the required ones first", async () => {
  const { stdout } = await cli(["run-batch", "--help"]);
  const sections = [
    "Required:",
    "Input and output:",
    "Engine:",
    "Sampling defaults",
    "Operations:",
  ];
  const at = sections.map((s) => stdout.indexOf(s));
  assert(at.every((i) => i >= 0), `every section is there: ${at}`);
  assertEquals([...at].sort((a, b) => a - b), at, "sections in order");
  const required = stdout.slice(at[0]!, at[1]!);
  for (const flag of ["--model", "--input-file", "--output-file"]) {
    assert(required.includes(flag), `${flag} is under Required`);
  }
  assert(!required.includes("--resume"), "optional flags are not under Required");
  assert(stdout.slice(at[1]!, at[2]!).includes("--resume"), "--resume is an input/output flag");
  assert(stdout.slice(at[4]!).includes("--version"), "--version is an operations flag");
  const long = stdout.split("\n").filter((l) => l.length > 100);
  assertEquals(long, [], "descriptions wrap at 100 columns");
});

/** A batch directory with one valid input line; the model path does not exist, so a run that got past the checks would fail naming it instead. */
async function noModelRun(
  setup: (dir: string) => Promise<{ input: string; output: string; extra?: string[] }>,
) {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(
    join(dir, "in.jsonl"),
    JSON.stringify({
      custom_id: "a",
      method: "POST",
      url: "/v1/completions",
      body: { prompt: "hi" },
    }) + "\n",
  );
  const { input, output, extra = [] } = await setup(dir);
  const result = await cli([
    "run-batch",
    "--model",
    join(dir, "no-such-model"),
    "-i",
    input,
    "-o",
    output,
    "-q",
    ...extra,
  ]);
  const files: string[] = [];
  for await (const walk of Deno.readDir(dir)) files.push(walk.name);
  await Deno.remove(dir, { recursive: true });
  return { ...result, dir, files };
}

function assertOneLineError(stderr: string, pattern: RegExp) {
  const lines = stderr.trim().split("\n");
  assertEquals(lines.length, 1, `one line: ${stderr}`);
  assertMatch(lines[0]!, /^error: /);
  assertMatch(lines[0]!, pattern);
  assert(!/os error/.test(stderr), `no raw OS error: ${stderr}`);
  assert(!/no-such-model/.test(stderr), "the check ran before the model was looked at");
}

Deno.test("a missing input file is one line naming it, before the model loads, with no .partial", async () => {
  const r = await noModelRun((dir) =>
    Promise.resolve({ input: join(dir, "missing.jsonl"), output: join(dir, "out.jsonl") })
  );
  assertEquals(r.code, 1);
  assertOneLineError(r.stderr, /missing\.jsonl.*does not exist/);
  assertEquals(r.files.sort(), ["in.jsonl"], "nothing written");
});

Deno.test("an input that is a directory is one line naming it", async () => {
  const r = await noModelRun((dir) =>
    Promise.resolve({ input: dir, output: join(dir, "o.jsonl") })
  );
  assertEquals(r.code, 1);
  assertOneLineError(r.stderr, /is a directory/);
  assertEquals(r.files.sort(), ["in.jsonl"]);
});

Deno.test({
  name: "an unreadable input file is one line naming it",
  ignore: Deno.uid() === 0, // root reads every file
}, async () => {
  const r = await noModelRun(async (dir) => {
    await Deno.chmod(join(dir, "in.jsonl"), 0o000);
    return { input: join(dir, "in.jsonl"), output: join(dir, "o.jsonl") };
  });
  assertEquals(r.code, 1);
  assertOneLineError(r.stderr, /in\.jsonl.*permission denied/);
});

Deno.test("an existing output without --overwrite or --resume is one line, before the model loads", async () => {
  const r = await noModelRun(async (dir) => {
    await Deno.writeTextFile(join(dir, "out.jsonl"), "earlier answers\n");
    return { input: join(dir, "in.jsonl"), output: join(dir, "out.jsonl") };
  });
  assertEquals(r.code, 1);
  assertOneLineError(r.stderr, /out\.jsonl" already exists: pass --overwrite .* or --resume/);
  assertEquals(r.files.sort(), ["in.jsonl", "out.jsonl"], "no .partial");
});

Deno.test("an existing error file without --overwrite is refused before the model loads", async () => {
  const r = await noModelRun(async (dir) => {
    await Deno.writeTextFile(join(dir, "err.jsonl"), "old\n");
    return {
      input: join(dir, "in.jsonl"),
      output: join(dir, "out.jsonl"),
      extra: ["--error-file", join(dir, "err.jsonl")],
    };
  });
  assertEquals(r.code, 1);
  assertOneLineError(r.stderr, /err\.jsonl" already exists/);
  assertEquals(r.files.sort(), ["err.jsonl", "in.jsonl"], "no .partial of either");
});

Deno.test("a missing output folder is created as mkdir -p would; a file in the way is one line", async () => {
  const created = await noModelRun((dir) =>
    Promise.resolve({ input: join(dir, "in.jsonl"), output: join(dir, "a", "b", "out.jsonl") })
  );
  // It got past the path checks (the folder was made) and failed on the model.
  assertEquals(created.code, 1);
  assertMatch(created.stderr, /no-such-model/);
  assert(created.files.includes("a"), "the output folder was created");
  const blocked = await noModelRun(async (dir) => {
    await Deno.writeTextFile(join(dir, "a"), "a file, not a folder\n");
    return { input: join(dir, "in.jsonl"), output: join(dir, "a", "out.jsonl") };
  });
  assertEquals(blocked.code, 1);
  assertOneLineError(blocked.stderr, /Cannot create the folder ".*\/a".*a file is in the way/);
});

Deno.test({
  name: "no WebGPU adapter is one line saying what to install",
  ignore: ignoreWithoutGpu,
}, async () => {
  const dir = await Deno.makeTempDir();
  const input = join(dir, "in.jsonl");
  await Deno.writeTextFile(input, "");
  // Deno's WebGPU on a backend this machine lacks: requestAdapter answers null.
  const backend = (await cli(["run-batch", "--help"])).stdout.includes("--backend")
    ? ["--backend", "webgpu"]
    : [];
  const { code, stderr } = await cli(
    ["run-batch", "--model", "models/ernie-tiny", "-i", input, "-o", join(dir, "o.jsonl"), "-q"]
      .concat(backend),
    { DENO_WEBGPU_BACKEND: "metal" },
  );
  assertEquals(code, 1);
  assertOneLineError(
    stderr.replace(/^(?!error:).*\n/gm, ""),
    /No WebGPU adapter.*mesa-vulkan-drivers/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test({
  name: "a progress line shows while the weights load",
  ignore: ignoreWithoutGpu,
}, async () => {
  const dir = await Deno.makeTempDir();
  const input = join(dir, "in.jsonl");
  await Deno.writeTextFile(input, "");
  const { code, stderr } = await cli([
    "run-batch",
    "--model",
    "models/ernie-tiny",
    "-i",
    input,
    "-o",
    join(dir, "o.jsonl"),
  ]);
  assertEquals(code, 0, stderr);
  assertMatch(stderr, /loading weights from models\/ernie-tiny: (\d+)\/\1 tensors/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("--no-async-scheduling runs steps one at a time; async scheduling is the default", () => {
  const base = ["--model", "models/ernie-tiny", "-i", "in.jsonl", "-o", "out.jsonl"];
  const on = parseRunBatch(base);
  const off = parseRunBatch([...base, "--no-async-scheduling"]);
  if (typeof on === "string" || typeof off === "string") throw new Error("parsed as help");
  assertEquals(on.engine.asyncScheduling, true);
  assertEquals(off.engine.asyncScheduling, false);
});
