/**
 * `mergeOutputs` on hand-made shard outputs: input order, error files, and
 * the loud failures (a custom_id twice, a request without an answer, an
 * answer without a request, a torn line), none of which leaves a file behind.
 */
import { join } from "node:path";
import { assertEquals, assertRejects } from "./_assert.ts";
import { mergeOutputs } from "../io/merge.ts";
import { httpErrorLine, successLine } from "../io/batch_format.ts";
import { inShard } from "../io/run_batch.ts";

const request = (id: string) =>
  JSON.stringify({ custom_id: id, method: "POST", url: "/v1/completions", body: { prompt: id } });
const ok = (id: string) => successLine(id, { text: `answer ${id}` });
const invalidLine = (lineNo: number) =>
  httpErrorLine(null, 400, {
    message: `line ${lineNo}: not valid JSON`,
    type: "invalid_request_error",
    param: null,
    code: "invalid_json",
  });
const failed = (id: string, lineNo: number) =>
  httpErrorLine(id, 400, {
    message: `line ${lineNo}: field "body.prompt": too long`,
    type: "invalid_request_error",
    param: "prompt",
    code: "invalid_field",
  });

/** An input of 7 lines (line 4 invalid JSON) and its answers split into 3 shards by line index. */
async function fixture() {
  const dir = await Deno.makeTempDir();
  const inputLines = [
    request("a"),
    request("b"),
    request("c"),
    "{oops",
    request("d"),
    request("e"),
    request("f"),
  ];
  const input = join(dir, "in.jsonl");
  await Deno.writeTextFile(input, inputLines.join("\n") + "\n");
  const answers = ["a", "b", "c", null, "d", "e", "f"].map((id, i) =>
    id === null ? invalidLine(i + 1) : id === "e" ? failed(id, i + 1) : ok(id)
  );
  const parts: string[] = [];
  for (let k = 0; k < 3; k++) {
    const mine = answers.filter((_, i) => inShard({ index: k, count: 3 }, i)).reverse(); // completion order
    const path = join(dir, `part-${k}.jsonl`);
    await Deno.writeTextFile(path, mine.join("\n") + "\n");
    parts.push(path);
  }
  return { dir, input, answers, parts };
}

const read = async (path: string) => (await Deno.readTextFile(path)).trimEnd().split("\n");
const names = (dir: string) => [...Deno.readDirSync(dir)].map((e) => e.name).sort();

Deno.test("merge with the input writes every answer in input order", async () => {
  const { dir, input, answers, parts } = await fixture();
  const summary = await mergeOutputs({
    inputs: parts,
    output: join(dir, "out.jsonl"),
    order: input,
  });
  assertEquals(summary, { answers: 7, succeeded: 5, failed: 2 });
  assertEquals(await read(join(dir, "out.jsonl")), answers);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("merge without the input keeps file order; an error file takes the failures", async () => {
  const { dir, answers, parts } = await fixture();
  await mergeOutputs({
    inputs: parts,
    output: join(dir, "out.jsonl"),
    errorFile: join(dir, "err.jsonl"),
  });
  const out = await read(join(dir, "out.jsonl"));
  assertEquals(out.length, 5);
  assertEquals(out[0], answers[6], "part-0 first (a, line 4, f), in its own order");
  assertEquals((await read(join(dir, "err.jsonl"))).sort(), [answers[3], answers[5]].sort());
  await Deno.remove(dir, { recursive: true });
});

Deno.test("merge fails on a custom_id in two files, naming both, and writes nothing", async () => {
  const { dir, parts } = await fixture();
  await Deno.writeTextFile(parts[2]!, ok("a") + "\n", { append: true });
  await assertRejects(
    () => mergeOutputs({ inputs: parts, output: join(dir, "out.jsonl") }),
    /custom_id "a" appears twice: in ".*part-0.jsonl" line \d and ".*part-2.jsonl" line 3/,
  );
  assertEquals(names(dir).filter((n) => n.startsWith("out")), []);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("merge with the input fails on a missing answer and on an answer to no request", async () => {
  const { dir, input, parts } = await fixture();
  await assertRejects(
    () => mergeOutputs({ inputs: parts.slice(0, 2), output: join(dir, "out.jsonl"), order: input }),
    /2 request\(s\) of ".*in.jsonl" have no answer in the shard outputs: "c", "e"/,
  );
  await Deno.writeTextFile(parts[0]!, ok("zzz") + "\n", { append: true });
  await assertRejects(
    () => mergeOutputs({ inputs: parts, output: join(dir, "out.jsonl"), order: input }),
    /1 answer\(s\) belong to no request of ".*in.jsonl": "zzz"/,
  );
  assertEquals(names(dir).filter((n) => n.startsWith("out")), []);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("merge refuses a torn last line (a killed shard) and its own output as an input", async () => {
  const { dir, parts } = await fixture();
  await Deno.writeTextFile(parts[1]!, '{"id":"batch_req_1","custom_id":"q', { append: true });
  await assertRejects(
    () => mergeOutputs({ inputs: parts, output: join(dir, "out.jsonl") }),
    /part-1.jsonl" line 3 is not a complete JSON line .*--resume/,
  );
  await assertRejects(
    () => mergeOutputs({ inputs: parts, output: parts[0]! }),
    /Refusing to merge into/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("merge reads shard outputs from http(s) URLs and gzip files", async () => {
  const { dir, input, answers, parts } = await fixture();
  const served = await Deno.readFile(parts[0]!);
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response(served),
  );
  const gz = `${parts[1]}.gz`;
  await Deno.writeFile(
    gz,
    new Uint8Array(
      await new Response(
        new Blob([await Deno.readFile(parts[1]!)]).stream().pipeThrough(
          new CompressionStream("gzip"),
        ),
      ).arrayBuffer(),
    ),
  );
  try {
    const url = `http://127.0.0.1:${server.addr.port}/part-0.jsonl`;
    await mergeOutputs({
      inputs: [url, gz, parts[2]!],
      output: join(dir, "out.jsonl"),
      order: input,
    });
    assertEquals(await read(join(dir, "out.jsonl")), answers);
  } finally {
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
