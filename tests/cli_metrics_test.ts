/**
 * Operations: the Prometheus endpoint scraped over 127.0.0.1 while a real
 * batch runs (counters growing), and the log formats a collector parses.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { ignoreWithoutGpu } from "./_gpu.ts";
import { runCli, spawnRunBatch } from "./_cli.ts";

async function writeInput(dir: string, n: number, maxTokens: number): Promise<string> {
  const input = join(dir, "in.jsonl");
  const lines = Array.from({ length: n }, (_, i) =>
    JSON.stringify({
      custom_id: `q${i}`,
      method: "POST",
      url: "/v1/completions",
      body: {
        prompt: `shared prefix for every request, then ${i}`,
        max_tokens: maxTokens,
        ignore_eos: true,
      },
    }));
  await Deno.writeTextFile(input, lines.join("\n") + "\n");
  return input;
}

/**
 * Parses the exposition text into `name{labels}` → value (the model_name label
 * left out of the key), checking each sample line's shape and its model_name.
 */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} (-?[0-9.e+-]+|NaN|\+Inf)$/.exec(line);
    assert(m, `a valid sample line: ${line}`);
    const labels = m[2]!.split(",").filter((l) => l !== "");
    assert(labels.includes('model_name="ernie-tiny"'), `labelled with the model: ${line}`);
    const rest = labels.filter((l) => !l.startsWith("model_name="));
    out.set(rest.length === 0 ? m[1]! : `${m[1]}{${rest.join(",")}}`, Number(m[3]));
  }
  return out;
}

/** Collects the child's stderr as it comes (so the pipe never fills) and resolves the metrics URL. */
function watchStderr(child: Deno.ChildProcess) {
  let text = "";
  const url = Promise.withResolvers<string>();
  const done = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      const m = /http:\/\/127\.0\.0\.1:\d+\/metrics/.exec(text);
      if (m) url.resolve(m[0]);
    }
    url.reject(new Error(`no metrics URL in stderr:\n${text}`));
  })();
  return { url: url.promise, done, text: () => text };
}

Deno.test({
  name: "--metrics-port serves Prometheus text on 127.0.0.1 during the run, counters growing",
  ignore: ignoreWithoutGpu,
}, async () => {
  const dir = await Deno.makeTempDir();
  const input = await writeInput(dir, 40, 32);
  const child = spawnRunBatch(input, join(dir, "out.jsonl"), [
    "--metrics-port",
    "0",
    "--max-num-seqs",
    "2",
  ], { stderr: "piped" });
  const watch = watchStderr(child);
  const url = await watch.url;
  assertMatch(url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
  const scrapes: Map<string, number>[] = [];
  let first = "";
  for (;;) {
    const response = await fetch(url).catch(() => null);
    if (response === null) break; // the run ended and the server closed
    assertEquals(response.status, 200);
    assertMatch(response.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const text = await response.text();
    first ||= text;
    scrapes.push(samples(text));
    await new Promise((r) => setTimeout(r, 25));
  }
  assertEquals((await child.status).code, 0, watch.text());
  await watch.done;
  for (
    const [name, type] of [
      ["batchwright:num_requests_running", "gauge"],
      ["batchwright:num_requests_waiting", "gauge"],
      ["batchwright:kv_cache_usage_perc", "gauge"],
      ["batchwright:prompt_tokens_total", "counter"],
      ["batchwright:generation_tokens_total", "counter"],
      ["batchwright:prefix_cache_queries_total", "counter"],
      ["batchwright:prefix_cache_hits_total", "counter"],
      ["batchwright:request_success_total", "counter"],
      ["batchwright:request_failure_total", "counter"],
      ["batchwright:iteration_tokens_total", "histogram"],
      ["batchwright:step_duration_seconds", "histogram"],
    ]
  ) {
    assert(first.includes(`# TYPE ${name} ${type}\n`), `${name} is a ${type}`);
    assert(first.includes(`# HELP ${name} `), `${name} has help`);
  }
  const series = (name: string) => scrapes.map((s) => s.get(name) ?? NaN);
  const generated = series("batchwright:generation_tokens_total");
  const succeeded = series("batchwright:request_success_total");
  const steps = series("batchwright:step_duration_seconds_count");
  for (
    const [name, values] of [["generated", generated], ["succeeded", succeeded], [
      "steps",
      steps,
    ]] as const
  ) {
    assert(
      values.every((v, i) => i === 0 || v >= values[i - 1]!),
      `${name} never decreases: ${values}`,
    );
  }
  const distinct = new Set(generated.filter((v) => v > 0));
  assert(distinct.size >= 2, `generation tokens seen growing between scrapes: ${generated}`);
  assert(Math.max(...succeeded) > 0, "finished requests counted during the run");
  assert(Math.max(...series("batchwright:num_requests_running")) > 0, "running requests seen");
  assert(Math.max(...series("batchwright:kv_cache_usage_perc")) > 0, "KV usage seen");
  assert(
    Math.max(...series("batchwright:prefix_cache_hits_total")) > 0,
    "the shared prompt prefix hit the cache",
  );
  const last = scrapes.at(-1)!;
  assertEquals(
    last.get('batchwright:step_duration_seconds_bucket{le="+Inf"}'),
    last.get("batchwright:step_duration_seconds_count"),
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("--metrics-port on a port in use is one clear line", async () => {
  const blocker = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dir = await Deno.makeTempDir();
  const input = join(dir, "in.jsonl");
  await Deno.writeTextFile(input, "");
  const { code, stderr } = await runCli([
    "run-batch",
    "--model",
    "models/ernie-tiny",
    "-i",
    input,
    "-o",
    join(dir, "o.jsonl"),
    "--metrics-port",
    String(blocker.addr.port),
  ]);
  blocker.close();
  assertEquals(code, 1);
  assertMatch(stderr, new RegExp(`--metrics-port ${blocker.addr.port}: .* is in use`));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("--log-format json writes one JSON object per line; errors too", async () => {
  const dir = await Deno.makeTempDir();
  const { code, stderr } = await runCli([
    "run-batch",
    "--model",
    "models/ernie-tiny",
    "-i",
    join(dir, "missing.jsonl"),
    "-o",
    join(dir, "o.jsonl"),
    "--log-format",
    "json",
  ]);
  assertEquals(code, 1);
  const lines = stderr.trim().split("\n").map((l) => JSON.parse(l));
  assertEquals(lines.length, 1);
  assertEquals(lines[0].level, "error");
  assertMatch(lines[0].msg, /missing\.jsonl.*does not exist/);
  assert(!Number.isNaN(Date.parse(lines[0].time)), "an ISO time");
  const bad = await runCli([
    "run-batch",
    "--model",
    "m",
    "-i",
    "a",
    "-o",
    "b",
    "--log-format",
    "xml",
  ]);
  assertEquals(bad.code, 2);
  assertMatch(bad.stderr, /--log-format must be one of text, json/);
  const usage = await runCli(["run-batch", "-i", "a", "-o", "b", "--log-format", "json"]);
  assertEquals(usage.code, 2);
  const line = JSON.parse(usage.stderr);
  assertEquals([line.level, line.event, line.msg], [
    "error",
    "usage",
    "missing required flag --model",
  ]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test({
  name:
    "a run in --log-format json says what it does as parseable events; --log-level warn keeps quiet",
  ignore: ignoreWithoutGpu,
}, async () => {
  const dir = await Deno.makeTempDir();
  const input = await writeInput(dir, 3, 2);
  const args = ["run-batch", "--model", "models/ernie-tiny", "-i", input, "--log-format", "json"];
  const { code, stderr } = await runCli([...args, "-o", join(dir, "a.jsonl")]);
  assertEquals(code, 0, stderr);
  const events = stderr.trim().split("\n").map((l) => JSON.parse(l));
  for (const e of events) {
    assertEquals(typeof e.time, "string");
    assert(["debug", "info", "warn", "error"].includes(e.level), e.level);
    assertEquals(typeof e.msg, "string");
  }
  const engine = events.find((e) => e.event === "engine");
  assertEquals(engine?.model, "ernie-tiny");
  const summary = events.find((e) => e.event === "summary");
  assertEquals([summary?.status, summary?.total, summary?.succeeded], ["completed", 3, 3]);
  assert(events.some((e) => e.event === "progress" && e.done === 3), "a final progress event");
  const quiet = await runCli([...args, "-o", join(dir, "b.jsonl"), "--log-level", "warn"]);
  assertEquals(quiet.code, 0, quiet.stderr);
  assertEquals(quiet.stderr, "", "a successful run says nothing at warn");
  const debug = await runCli([...args, "-o", join(dir, "c.jsonl"), "--log-level", "debug"]);
  assertEquals(debug.code, 0, debug.stderr);
  const answers = debug.stderr.trim().split("\n").map((l) => JSON.parse(l))
    .filter((e) => e.event === "answer");
  assertEquals(answers.map((e) => [e.level, e.custom_id, e.outcome]).sort(), [
    ["debug", "q0", "succeeded"],
    ["debug", "q1", "succeeded"],
    ["debug", "q2", "succeeded"],
  ]);
  assert(answers.every((e) => e.completion_tokens === 2), "each answer's usage");
  await Deno.remove(dir, { recursive: true });
});
