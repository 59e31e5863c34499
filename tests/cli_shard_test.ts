/**
 * Many machines: three `--shard K/3` runs plus `merge` give the same answers,
 * line for line, as one unsharded run (greedy decoding on the shipped model),
 * also when a shard was killed and resumed; `merge` fails loudly on a
 * missing or repeated answer.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { ignoreWithoutGpu } from "./_gpu.ts";
import { runCli, spawnRunBatch } from "./_cli.ts";

const N = 20;

/** N greedy requests of both kinds, one invalid line and one blank line among them. */
async function writeInput(dir: string, maxTokens = 6): Promise<string> {
  const lines: string[] = [];
  for (let i = 0; i < N; i++) {
    lines.push(JSON.stringify(
      i % 4 === 3
        ? {
          custom_id: `q${i}`,
          method: "POST",
          url: "/v1/completions",
          body: { prompt: `count ${i}`, max_tokens: maxTokens, temperature: 0, ignore_eos: true },
        }
        : {
          custom_id: `q${i}`,
          method: "POST",
          url: "/v1/chat/completions",
          body: {
            messages: [{ role: "user", content: `question ${i}` }],
            max_tokens: maxTokens,
            temperature: 0,
            ignore_eos: true,
          },
        },
    ));
    if (i === 7) lines.push("{not json");
    if (i === 12) lines.push("");
  }
  const input = join(dir, "in.jsonl");
  await Deno.writeTextFile(input, lines.join("\n") + "\n");
  return input;
}

/** What must match between runs: everything but the random ids and timestamps. */
function comparable(line: string): unknown {
  const a = JSON.parse(line);
  if (a.response) delete a.response.request_id;
  const body = a.response?.body;
  if (body) {
    delete body.id;
    delete body.created;
  }
  return { custom_id: a.custom_id, response: a.response, error: a.error };
}

async function lines(path: string): Promise<string[]> {
  return (await Deno.readTextFile(path)).split("\n").filter((l) => l !== "");
}

async function runBatch(input: string, output: string, extra: string[]) {
  const { code } = await spawnRunBatch(input, output, extra).status;
  assertEquals(code, 0, `run-batch ${extra.join(" ")} exit status`);
}

Deno.test({
  name: "three shards plus merge equal one unsharded run, line for line",
  ignore: ignoreWithoutGpu,
}, async () => {
  const dir = await Deno.makeTempDir();
  const input = await writeInput(dir);
  const whole = join(dir, "whole.jsonl");
  await runBatch(input, whole, ["--order", "input"]);
  for (let k = 0; k < 3; k++) {
    await runBatch(input, join(dir, "part-{shard}.jsonl"), ["--shard", `${k}/3`]);
  }
  const parts = [2, 0, 1].map((k) => join(dir, `part-${k}.jsonl`)); // any order
  // Each shard holds exactly its lines: 22 input lines, line index i in shard i mod 3.
  const shardIds = await Promise.all(
    [0, 1, 2].map(async (k) =>
      (await lines(join(dir, `part-${k}.jsonl`))).map((l) => JSON.parse(l).custom_id)
    ),
  );
  assert(shardIds[0]!.includes("q0") && shardIds[1]!.includes("q1") && shardIds[2]!.includes("q2"));
  assertEquals(shardIds.flat().length, N + 1, "20 answers and the invalid line's error");
  const merged = join(dir, "merged.jsonl");
  const m = await runCli(["merge", "-o", merged, "--input", input, ...parts]);
  assertEquals(m.code, 0, m.stderr);
  assertMatch(m.stderr, /merged 21 answers \(20 succeeded, 1 failed\)/);
  const expected = (await lines(whole)).map(comparable);
  assertEquals((await lines(merged)).map(comparable), expected);
  await Deno.remove(dir, { recursive: true });
});

Deno.test({
  name: "a shard killed mid-run and resumed still merges into the unsharded answers",
  ignore: ignoreWithoutGpu,
}, async () => {
  const dir = await Deno.makeTempDir();
  const input = await writeInput(dir, 48);
  const whole = join(dir, "whole.jsonl");
  await runBatch(input, whole, ["--order", "input"]);
  await runBatch(input, join(dir, "p0.jsonl"), ["--shard", "0/3"]);
  await runBatch(input, join(dir, "p2.jsonl"), ["--shard", "2/3"]);
  // Shard 1, one request at a time, killed once its first answer reached the partial file.
  const p1 = join(dir, "p1.jsonl");
  const child = spawnRunBatch(input, p1, ["--shard", "1/3", "--max-num-seqs", "1"]);
  for (let i = 0; i < 1200; i++) {
    const text = await Deno.readTextFile(`${p1}.partial`).catch(() => "");
    if (text.includes("\n")) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  await child.status;
  const killed = await lines(`${p1}.partial`);
  // Part-way however many answers a loaded machine let through before the kill landed.
  assert(killed.length >= 1 && killed.length < 16, `killed part-way (${killed.length} of 16)`);
  // Unfinished, it does not merge: merge names what is missing.
  const early = await runCli([
    "merge",
    "-o",
    join(dir, "early.jsonl"),
    "--input",
    input,
    join(dir, "p0.jsonl"),
    `${p1}.partial`,
    join(dir, "p2.jsonl"),
  ]);
  assertEquals(early.code, 1);
  assertMatch(early.stderr, /have no answer in the shard outputs/);
  await runBatch(input, p1, ["--shard", "1/3", "--resume"]);
  const merged = join(dir, "merged.jsonl");
  const m = await runCli([
    "merge",
    "-o",
    merged,
    "-i",
    input,
    ...["p0", "p1", "p2"].map((p) => join(dir, `${p}.jsonl`)),
  ]);
  assertEquals(m.code, 0, m.stderr);
  assertEquals((await lines(merged)).map(comparable), (await lines(whole)).map(comparable));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("--shard takes K/N or auto from a Kubernetes Indexed Job or a Slurm array", async () => {
  const dir = await Deno.makeTempDir();
  const input = join(dir, "in.jsonl");
  await Deno.writeTextFile(input, "");
  const run = (extra: string[], env: Record<string, string> = {}) =>
    runCli(
      [
        "run-batch",
        "--model",
        "models/ernie-tiny",
        "-i",
        input,
        "-o",
        join(dir, "o-{shard}.jsonl"),
        "--validate-only",
        ...extra,
      ],
      env,
    );
  const k8s = await run(["--shard", "auto", "--num-shards", "4"], { JOB_COMPLETION_INDEX: "2" });
  assertEquals(k8s.code, 0, k8s.stderr);
  assertMatch(k8s.stderr, /shard 2\/4/);
  const k8sEnv = await run(["--shard", "auto"], {
    JOB_COMPLETION_INDEX: "1",
    BATCHWRIGHT_NUM_SHARDS: "3",
  });
  assertMatch(k8sEnv.stderr, /shard 1\/3/);
  const slurm = await run(["--shard", "auto"], {
    SLURM_ARRAY_TASK_ID: "7",
    SLURM_ARRAY_TASK_MIN: "5",
    SLURM_ARRAY_TASK_COUNT: "4",
  });
  assertMatch(slurm.stderr, /shard 2\/4/);
  const none = await run(["--shard", "auto"]);
  assertEquals(none.code, 2);
  assertMatch(none.stderr, /JOB_COMPLETION_INDEX.*SLURM_ARRAY_TASK_ID/);
  const noCount = await run(["--shard", "auto"], { JOB_COMPLETION_INDEX: "0" });
  assertEquals(noCount.code, 2);
  assertMatch(noCount.stderr, /--num-shards N or set BATCHWRIGHT_NUM_SHARDS/);
  const bad = await run(["--shard", "3/3"]);
  assertEquals(bad.code, 2);
  assertMatch(bad.stderr, /shard index 3 is not below the shard count 3/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("merge: usage errors exit 2, a repeated custom_id is one line and exit 1", async () => {
  const dir = await Deno.makeTempDir();
  const none = await runCli(["merge", "-o", join(dir, "out.jsonl")]);
  assertEquals(none.code, 2);
  assertMatch(none.stderr, /no shard outputs to merge/);
  const noOut = await runCli(["merge", join(dir, "a.jsonl")]);
  assertEquals(noOut.code, 2);
  assertMatch(noOut.stderr, /missing -o OUTPUT/);
  const help = await runCli(["merge", "--help"]);
  assertEquals(help.code, 0);
  assertMatch(help.stdout, /--input PATH/);
  const line = JSON.stringify({
    id: "batch_req_1",
    custom_id: "x",
    response: { status_code: 200, request_id: "r", body: {} },
    error: null,
  });
  await Deno.writeTextFile(join(dir, "a.jsonl"), line + "\n");
  await Deno.writeTextFile(join(dir, "b.jsonl"), line + "\n");
  const twice = await runCli([
    "merge",
    "-o",
    join(dir, "out.jsonl"),
    join(dir, "a.jsonl"),
    join(dir, "b.jsonl"),
  ]);
  assertEquals(twice.code, 1);
  assertEquals(twice.stderr.trim().split("\n").length, 1);
  assertMatch(
    twice.stderr,
    /^error: custom_id "x" appears twice: in ".*a\.jsonl" line 1 and ".*b\.jsonl" line 1/,
  );
  assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["a.jsonl", "b.jsonl"]);
  await Deno.remove(dir, { recursive: true });
});
