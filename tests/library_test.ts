/**
 * The library as a user gets it: a fresh Deno program, in a folder of its own,
 * imports `mod.ts`, answers a request and a stream of batch lines, and exits by
 * itself (no Deno.exit in the library, nothing printed by it, resources released).
 */
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { assert, assertEquals } from "./_assert.ts";

const ROOT = resolve(import.meta.dirname!, "..");

Deno.test("a fresh Deno program uses the library through mod.ts and exits by itself", async () => {
  const dir = await Deno.makeTempDir({ prefix: "batchwright-library-" });
  try {
    const program = `
import { Batchwright } from ${JSON.stringify(pathToFileURL(join(ROOT, "mod.ts")).href)};

await using llm = await Batchwright.load(${JSON.stringify(join(ROOT, "models", "ernie-tiny"))});
const reply = await llm.request("/v1/chat/completions", {
  messages: [{ role: "user", content: "hi" }],
  max_tokens: 3,
  temperature: 0,
});
const answers = [];
const lines = [
  '{"custom_id":"a","method":"POST","url":"/v1/completions","body":{"prompt":"x","max_tokens":2}}',
  '{"custom_id":"b","method":"POST","url":"/v1/embeddings","body":{"input":"y"}}',
  "not json",
];
for await (const a of llm.batch(lines)) answers.push(a);
console.log(JSON.stringify({ reply, answers }));
`;
    await Deno.writeTextFile(join(dir, "main.ts"), program);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", join(ROOT, "deno.json"), join(dir, "main.ts")],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assertEquals(out.code, 0, stderr);
    const stdout = new TextDecoder().decode(out.stdout).trim();
    // The library itself printed nothing: the program's one line is all of stdout.
    assertEquals(stdout.split("\n").length, 1, stdout);
    const { reply, answers } = JSON.parse(stdout);
    assertEquals(reply.object, "chat.completion");
    assertEquals(reply.usage.completion_tokens, 3);
    const byId = new Map(answers.map((a: { custom_id: string | null }) => [a.custom_id, a]));
    assertEquals(answers.length, 3);
    assertEquals(
      (byId.get("a") as { response: { status_code: number } }).response.status_code,
      200,
    );
    assertEquals(
      (byId.get("b") as { response: { status_code: number } }).response.status_code,
      200,
    );
    const bad = answers.find((a: { custom_id: string | null }) => a.custom_id === null);
    assert(bad?.response?.status_code === 400, JSON.stringify(bad));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
