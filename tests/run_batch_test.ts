import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { type BatchBackend, runBatch, type RunBatchOptions } from "../io/run_batch.ts";
import { formatSummary } from "../io/summary.ts";
import { EngineFailure, RequestError } from "../engine/types.ts";
import { startServer, type TestServer } from "./_http_servers.ts";

// ---- a fake backend that echoes (the real model is tested elsewhere) ----

interface EchoBody {
  delay_ms?: number;
  hang?: boolean;
  reject?: boolean;
  bad_param?: unknown;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = Number.isFinite(ms) ? setTimeout(resolve, ms) : undefined;
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

/**
 * The echo backend. `gate(customId)`, when given, may return a promise the
 * request waits on before it answers (events, not timers, order the test);
 * `onCall` runs as each request starts.
 */
function echoBackend(
  hooks: { gate?: (customId: string) => Promise<void> | undefined; onCall?: () => void } = {},
) {
  const stats = { calls: [] as string[], inFlight: 0, maxInFlight: 0 };
  const backend: BatchBackend = {
    urls: ["/v1/chat/completions", "/v1/completions"],
    validate(_url, body) {
      if ((body as EchoBody).bad_param !== undefined) {
        throw new RequestError("bad_param is not supported", 400, "bad_param", "invalid_value");
      }
    },
    async run(url, body, { customId, signal }) {
      stats.calls.push(customId);
      stats.maxInFlight = Math.max(stats.maxInFlight, ++stats.inFlight);
      hooks.onCall?.();
      try {
        const b = body as EchoBody;
        const gate = hooks.gate?.(customId);
        if (gate) await Promise.race([gate, sleep(Infinity, signal)]);
        if (b.hang) await sleep(Infinity, signal);
        else if (b.delay_ms) await sleep(b.delay_ms, signal);
        if (b.reject) throw new RequestError("the model refused", 400, "messages", "invalid_value");
        return {
          object: "echo",
          custom_id: customId,
          url,
          body,
          usage: { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 },
        };
      } finally {
        stats.inFlight--;
      }
    },
  };
  return { backend, stats };
}

// ---- helpers ----

const QUIET = { quiet: true } as const;

function requestLine(id: string, body: EchoBody = {}): string {
  return JSON.stringify({ custom_id: id, method: "POST", url: "/v1/chat/completions", body });
}

function jsonl(n: number, body: (i: number) => EchoBody = () => ({})): string {
  return Array.from({ length: n }, (_, i) => requestLine(`r${i}`, body(i))).join("\n") + "\n";
}

// deno-lint-ignore no-explicit-any
type OutLine = any;
const parseLines = (text: string): OutLine[] =>
  text.split("\n").filter((l) => l.trim() !== "").map((l) => JSON.parse(l));
const readOut = async (path: string) => parseLines(await Deno.readTextFile(path));
const successIds = (lines: OutLine[]) =>
  lines.filter((l) => l.response?.status_code === 200).map((l) => l.custom_id as string);

async function gzip(text: string): Promise<Uint8Array> {
  const s = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(s).arrayBuffer());
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// ---- conformance: every input source × every output sink ----

type Source = (
  text: string,
  dir: string,
) => Promise<{ input: string; stdin?: ReadableStream<Uint8Array>; server?: TestServer }>;
const SOURCES: Record<string, Source> = {
  "file": async (text, dir) => {
    await Deno.writeTextFile(`${dir}/in.jsonl`, text);
    return { input: `${dir}/in.jsonl` };
  },
  "URL": (text) => {
    const server = startServer(() => new Response(text));
    return Promise.resolve({ input: `${server.url}/in.jsonl`, server });
  },
  "stdin": (text) => Promise.resolve({ input: "-", stdin: new Blob([text]).stream() }),
  "gzip file": async (text, dir) => {
    await Deno.writeFile(`${dir}/in.jsonl.gz`, await gzip(text));
    return { input: `${dir}/in.jsonl.gz` };
  },
  "gzip URL": async (text) => {
    const gz = await gzip(text);
    const server = startServer(() => new Response(gz as BufferSource));
    return { input: `${server.url}/in.jsonl.gz`, server };
  },
};

type Sink = (
  dir: string,
) => {
  output: string;
  stdout?: WritableStream<Uint8Array>;
  read: () => Promise<string>;
  server?: TestServer;
};
const SINKS: Record<string, Sink> = {
  "file": (dir) => ({
    output: `${dir}/out.jsonl`,
    read: () => Deno.readTextFile(`${dir}/out.jsonl`),
  }),
  "URL": () => {
    let stored = "";
    const server = startServer((_r, _c, body) => {
      stored = body;
      return new Response(null, { status: 201 });
    });
    return { output: `${server.url}/out.jsonl`, read: () => Promise.resolve(stored), server };
  },
  "stdout": () => {
    const decoder = new TextDecoder();
    let text = "";
    const stdout = new WritableStream<Uint8Array>({
      write: (c) => void (text += decoder.decode(c)),
    });
    return { output: "-", stdout, read: () => Promise.resolve(text) };
  },
};

const CONFORMANCE_INPUT = jsonl(12, (i) => ({ delay_ms: (i * 7) % 5 })) + "{not json\n" +
  requestLine("r0") + "\n";

for (const [sourceName, source] of Object.entries(SOURCES)) {
  for (const [sinkName, sink] of Object.entries(SINKS)) {
    Deno.test(`runBatch answers every request once: ${sourceName} → ${sinkName}`, () =>
      withDir(async (dir) => {
        const src = await source(CONFORMANCE_INPUT, dir);
        const dst = sink(dir);
        const { backend } = echoBackend();
        try {
          const summary = await runBatch({
            input: src.input,
            stdin: src.stdin,
            output: dst.output,
            stdout: dst.stdout,
            outputTmpDir: dst.server ? dir : undefined,
            backend,
            progress: QUIET,
          });
          const lines = parseLines(await dst.read());
          assertEquals(
            successIds(lines).sort(),
            Array.from({ length: 12 }, (_, i) => `r${i}`).sort(),
          );
          const errors = lines.filter((l) => l.response?.status_code === 400);
          assertEquals(errors.map((l) => [l.custom_id, l.response.body.error.code]), [
            [null, "invalid_json"],
            ["r0", "duplicate_custom_id"],
          ]);
          const echo = lines.find((l) => l.custom_id === "r3").response.body;
          assertEquals([echo.custom_id, echo.body], ["r3", { delay_ms: 1 }]);
          assertEquals(
            [summary.status, summary.total, summary.succeeded, summary.failed],
            ["completed", 14, 12, 2],
          );
        } finally {
          await src.server?.close();
          await dst.server?.close();
        }
      }));
  }
}

// ---- the bad-input corpus ----

const CORPUS = new URL("./bad_inputs/", import.meta.url).pathname;
for (
  const entry of [...Deno.readDirSync(CORPUS)].filter((e) => e.name.endsWith(".jsonl")).sort((
    a,
    b,
  ) => a.name < b.name ? -1 : 1)
) {
  const name = entry.name.replace(/\.jsonl$/, "");
  Deno.test(`bad input "${name}" gets its error lines and every good request answered`, () =>
    withDir(async (dir) => {
      const expected = JSON.parse(await Deno.readTextFile(`${CORPUS}${name}.expected.json`));
      const { backend } = echoBackend();
      const summary = await runBatch({
        input: `${CORPUS}${name}.jsonl`,
        output: `${dir}/out.jsonl`,
        backend,
        order: "input",
        maxLineBytes: expected.maxLineBytes,
        progress: QUIET,
      });
      const lines = await readOut(`${dir}/out.jsonl`);
      assertEquals(successIds(lines).sort(), [...expected.succeeded].sort());
      const errors = lines.filter((l) => l.response?.status_code !== 200);
      assertEquals(errors.length, expected.errors.length);
      for (const [i, want] of expected.errors.entries()) {
        const got = errors[i];
        assertEquals([
          got.custom_id,
          got.response.status_code,
          got.response.body.error.code,
          got.error,
        ], [
          want.custom_id,
          want.status,
          want.code,
          null,
        ]);
        assert(
          got.response.body.error.message.startsWith(want.message),
          `${got.response.body.error.message} should start with ${want.message}`,
        );
      }
      assertEquals([summary.succeeded, summary.failed], [
        expected.succeeded.length,
        expected.errors.length,
      ]);
    }));
}

// ---- order, bounds, failures ----

Deno.test("order input writes answers in input order; completion writes them as they finish", async () => {
  // r5 finishes first and r0 last, each only once the one before it was answered (and, in
  // completion order, written): no timing decides the order.
  const text = jsonl(6) + "oops\n";
  for (const order of ["input", "completion"] as const) {
    const written: (string | null)[] = [];
    const turns = ["r5", "r4", "r3", "r2", "r1", "r0"];
    const open = new Map<string, () => void>(); // a waiting request → its release
    let finished = 0;
    const next = () => {
      const id = turns[finished];
      const started = open.size + finished === turns.length; // all six are in flight
      // In completion order the previous answer (or, before r5, the "oops" line) is written.
      const ready = order === "input" || written.length === finished + 1;
      const release = id === undefined ? undefined : open.get(id);
      if (release && started && ready) {
        open.delete(id!);
        finished++;
        release();
      }
    };
    const { backend } = echoBackend({
      gate: (id) =>
        new Promise<void>((resolve) => {
          open.set(id, resolve);
          next();
        }).then(next),
    });
    const decoder = new TextDecoder();
    const stdout = new WritableStream<Uint8Array>({
      write(chunk) {
        for (const line of parseLines(decoder.decode(chunk))) written.push(line.custom_id);
        next();
      },
    });
    await runBatch({
      input: "-",
      stdin: new Blob([text]).stream(),
      output: "-",
      stdout,
      backend,
      order,
      progress: QUIET,
    });
    if (order === "input") assertEquals(written, ["r0", "r1", "r2", "r3", "r4", "r5", null]);
    else assertEquals(written, [null, "r5", "r4", "r3", "r2", "r1", "r0"]);
  }
});

Deno.test("maxInFlight bounds the requests handed to the backend at once", () =>
  withDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/in.jsonl`, jsonl(40));
    for (const order of ["input", "completion"] as const) {
      // Requests wait until four are in flight (or the last has started): more would pass
      // the bound, fewer would never be released.
      const held: (() => void)[] = [];
      const { backend, stats } = echoBackend({
        gate: () => new Promise<void>((resolve) => held.push(resolve)),
        onCall: () => {
          if (stats.inFlight === 4 || stats.calls.length === 40) {
            queueMicrotask(() => held.splice(0).forEach((release) => release()));
          }
        },
      });
      await runBatch({
        input: `${dir}/in.jsonl`,
        output: `${dir}/${order}.jsonl`,
        backend,
        order,
        maxInFlight: 4,
        progress: QUIET,
      });
      assertEquals(stats.calls.length, 40);
      assertEquals(stats.maxInFlight, 4);
    }
  }));

Deno.test("a 4xx from the backend becomes that request's error line; others succeed", () =>
  withDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/in.jsonl`, jsonl(3, (i) => (i === 1 ? { reject: true } : {})));
    const { backend } = echoBackend();
    await runBatch({
      input: `${dir}/in.jsonl`,
      output: `${dir}/out.jsonl`,
      backend,
      progress: QUIET,
    });
    const bad = (await readOut(`${dir}/out.jsonl`)).find((l) => l.custom_id === "r1");
    assertEquals(bad.response.status_code, 400);
    assertEquals(bad.response.body.error, {
      message: "line 2: the model refused",
      type: "invalid_request_error",
      param: "messages",
      code: "invalid_value",
    });
  }));

Deno.test("a request past requestTimeoutMs gets request_timeout; the rest go on", () =>
  withDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/in.jsonl`, jsonl(4, (i) => (i === 2 ? { hang: true } : {})));
    const { backend } = echoBackend();
    const s = await runBatch({
      input: `${dir}/in.jsonl`,
      output: `${dir}/out.jsonl`,
      backend,
      requestTimeoutMs: 100,
      progress: QUIET,
    });
    const lines = await readOut(`${dir}/out.jsonl`);
    const slow = lines.find((l) => l.custom_id === "r2");
    assertEquals([slow.response, slow.error.code], [null, "request_timeout"]);
    assertEquals([s.status, s.succeeded, s.failed], ["completed", 3, 1]);
  }));

Deno.test("the deadline turns unfinished and unstarted requests into batch_expired", () =>
  withDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/in.jsonl`, jsonl(10, (i) => (i < 2 ? {} : { hang: true })));
    const { backend } = echoBackend();
    const s = await runBatch({
      input: `${dir}/in.jsonl`,
      output: `${dir}/out.jsonl`,
      backend,
      maxInFlight: 4,
      // r0 and r1 answer at once; the margin is for a loaded machine, the hung ones wait it out.
      deadlineMs: 1000,
      progress: QUIET,
    });
    const lines = await readOut(`${dir}/out.jsonl`);
    assertEquals(lines.length, 10);
    assertEquals(lines.filter((l) => l.error?.code === "batch_expired").length, 8);
    assertEquals([s.status, s.succeeded, s.cancelled], ["expired", 2, 8]);
  }));

Deno.test("cancelling via the signal lets in-flight work finish within the grace period, then writes batch_cancelled", () =>
  withDir(async (dir) => {
    const text = jsonl(20, (i) => (i < 4 ? {} : { hang: true }));
    await Deno.writeTextFile(`${dir}/in.jsonl`, text);
    // The batch is cancelled once r0..r2 have answered and r3, r4 are in flight; r3 answers
    // as the cancel arrives (inside the grace period), the hung ones wait out the grace.
    const controller = new AbortController();
    const cancelled = new Promise<void>((resolve) =>
      controller.signal.addEventListener("abort", () => resolve(), { once: true })
    );
    let answered = 0;
    const cancelWhenReady = () => {
      if (answered === 3 && stats.calls.length >= 5 && !controller.signal.aborted) {
        controller.abort();
      }
    };
    const { backend, stats } = echoBackend({
      gate: (id) => {
        if (id === "r3") return cancelled;
        if (["r0", "r1", "r2"].includes(id)) {
          return Promise.resolve().then(() => {
            answered++;
            cancelWhenReady();
          });
        }
      },
      onCall: () => queueMicrotask(cancelWhenReady),
    });
    const s = await runBatch({
      input: `${dir}/in.jsonl`,
      output: `${dir}/out.jsonl`,
      backend,
      maxInFlight: 5,
      signal: controller.signal,
      cancelGraceMs: 300,
      summaryFile: `${dir}/summary.json`,
      progress: QUIET,
    });
    const lines = await readOut(`${dir}/out.jsonl`);
    assertEquals(
      lines.map((l) => l.custom_id).sort(),
      Array.from({ length: 20 }, (_, i) => `r${i}`).sort(),
    );
    assertEquals(successIds(lines).sort(), ["r0", "r1", "r2", "r3"]);
    assert(
      lines.filter((l) => l.response === null).every((l) => l.error.code === "batch_cancelled"),
    );
    assertEquals([s.status, s.succeeded, s.cancelled], ["cancelled", 4, 16]);
    const batch = JSON.parse(await Deno.readTextFile(`${dir}/summary.json`));
    assertEquals([batch.object, batch.status, batch.request_counts], ["batch", "cancelled", {
      total: 20,
      completed: 4,
      failed: 16,
    }]);
    assertEquals(batch.usage, { prompt_tokens: 8, completion_tokens: 12, total_tokens: 20 });
    assert(formatSummary(s).startsWith("cancelled: 4/20 succeeded"));
  }));

Deno.test("an existing output is refused without overwrite, replaced with it", () =>
  withDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/in.jsonl`, jsonl(2));
    await Deno.writeTextFile(`${dir}/out.jsonl`, "precious\n");
    const { backend } = echoBackend();
    const opts: RunBatchOptions = {
      input: `${dir}/in.jsonl`,
      output: `${dir}/out.jsonl`,
      backend,
      progress: QUIET,
    };
    await assertRejects(() => runBatch(opts), /already exists/);
    assertEquals(await Deno.readTextFile(`${dir}/out.jsonl`), "precious\n");
    await runBatch({ ...opts, overwrite: true });
    assertEquals((await readOut(`${dir}/out.jsonl`)).length, 2);
  }));

Deno.test("errorFile takes the failures; onInvalid skip and abort", () =>
  withDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/in.jsonl`, jsonl(3) + "nope\n" + requestLine("r9") + "\n");
    const { backend } = echoBackend();
    const base = { input: `${dir}/in.jsonl`, backend, progress: QUIET };
    await runBatch({ ...base, output: `${dir}/a.jsonl`, errorFile: `${dir}/a.err.jsonl` });
    assertEquals(successIds(await readOut(`${dir}/a.jsonl`)).length, 4);
    assertEquals((await readOut(`${dir}/a.err.jsonl`)).map((l) => l.response.body.error.code), [
      "invalid_json",
    ]);
    const skipped = await runBatch({ ...base, output: `${dir}/b.jsonl`, onInvalid: "skip" });
    assertEquals([skipped.skipped, (await readOut(`${dir}/b.jsonl`)).length], [1, 4]);
    const aborted = await runBatch({
      ...base,
      output: `${dir}/c.jsonl`,
      onInvalid: "abort",
      order: "input",
    });
    assertEquals(aborted.status, "failed");
    assert(aborted.error?.includes("line 4: invalid JSON") && aborted.error.includes("--resume"));
    assertEquals((await readOut(`${dir}/c.jsonl.partial`)).length, 3);
  }));

Deno.test("validateOnly checks every line and writes nothing", () =>
  withDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/in.jsonl`,
      jsonl(3) + requestLine("x", { bad_param: 1 }) + "\n",
    );
    const { backend, stats } = echoBackend();
    const logged: string[] = [];
    const s = await runBatch({
      input: `${dir}/in.jsonl`,
      output: `${dir}/out.jsonl`,
      backend,
      validateOnly: true,
      progress: { isTerminal: false, intervalMs: 60_000, write: (t) => void logged.push(t) },
    });
    assertEquals([s.status, s.total, s.failed, stats.calls.length], ["validated", 4, 1, 0]);
    assert(logged.some((l) => l.includes('line 4: field "body.bad_param"')));
    assertEquals(await Deno.lstat(`${dir}/out.jsonl`).then(() => true, () => false), false);
  }));

Deno.test("an input connection dropped mid-body fails the batch and keeps the partial output", () =>
  withDir(async (dir) => {
    const text = jsonl(5);
    const server = startServer(() =>
      new Response(
        new ReadableStream({
          start(c) {
            c.enqueue(new TextEncoder().encode(text.slice(0, text.length - 20)));
          },
          pull: (c) => new Promise((r) => setTimeout(r, 20)).then(() => c.error(new Error("drop"))),
        }),
      )
    );
    try {
      const { backend } = echoBackend();
      const s = await runBatch({
        input: `${server.url}/in.jsonl`,
        output: `${dir}/out.jsonl`,
        backend,
        progress: QUIET,
      });
      assertEquals(s.status, "failed");
      assert(s.error?.includes("connection lost"));
      assertEquals(successIds(await readOut(`${dir}/out.jsonl.partial`)).length, 4);
    } finally {
      await server.close();
    }
  }));

// ---- resume ----

Deno.test("resume after a simulated interruption answers each custom_id exactly once", () =>
  withDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/in.jsonl`, jsonl(10));
    const { backend: first } = echoBackend();
    await runBatch({
      input: `${dir}/in.jsonl`,
      output: `${dir}/out.jsonl`,
      backend: first,
      progress: QUIET,
    });
    // Simulate a crash of a later run: keep half the answers, a failure, a torn line, in the partial file.
    const lines = (await Deno.readTextFile(`${dir}/out.jsonl`)).trim().split("\n");
    await Deno.remove(`${dir}/out.jsonl`);
    await Deno.writeTextFile(
      `${dir}/out.jsonl.partial`,
      lines.slice(0, 5).join("\n") + "\n" + lines[5]!.slice(0, 40),
    );
    const { backend, stats } = echoBackend();
    const s = await runBatch({
      input: `${dir}/in.jsonl`,
      output: `${dir}/out.jsonl`,
      backend,
      resume: true,
      progress: QUIET,
    });
    const out = await readOut(`${dir}/out.jsonl`);
    assertEquals(successIds(out).sort(), Array.from({ length: 10 }, (_, i) => `r${i}`).sort());
    assertEquals(out.length, 10);
    assertEquals(stats.calls.length, 5);
    assertEquals([s.succeeded, s.resumed], [10, 5]);
  }));

Deno.test("a SIGKILLed run followed by resume ends with exactly one success per custom_id", () =>
  withDir(async (dir) => {
    const n = 200;
    await Deno.writeTextFile(`${dir}/in.jsonl`, jsonl(n));
    const runBatchUrl = new URL("../io/run_batch.ts", import.meta.url).href;
    // The child answers its first 40 requests and then hangs, so it is always killed mid-batch.
    const code = `
      import { runBatch } from ${JSON.stringify(runBatchUrl)};
      let started = 0;
      const backend = {
        urls: ["/v1/chat/completions"],
        validate() {},
        run: (_url, _body, { customId, signal }) => new Promise((resolve, reject) => {
          const t = setTimeout(() => resolve({ slow: customId }), ++started <= 40 ? 5 : 1e9);
          signal.addEventListener("abort", () => { clearTimeout(t); reject(signal.reason); });
        }),
      };
      await runBatch({ input: Deno.args[0], output: Deno.args[1], backend, maxInFlight: 4, progress: { quiet: true } });
    `;
    const config = new URL("../deno.json", import.meta.url).pathname;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["eval", "--config", config, code, `${dir}/in.jsonl`, `${dir}/out.jsonl`],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const partial = `${dir}/out.jsonl.partial`;
    let exited = false;
    const exit = child.status.finally(() => (exited = true));
    let written = 0;
    // However slow the machine, wait for 30 answers (or for the child to fail on its own).
    while (written < 30 && !exited) {
      await new Promise((r) => setTimeout(r, 20));
      written = await Deno.readTextFile(partial).then((t) => t.split("\n").length - 1, () => 0);
    }
    if (!exited) child.kill("SIGKILL");
    const status = await exit;
    const stderr = await new Response(child.stderr).text();
    assert(written >= 30, `the child wrote ${written} lines (${stderr})`);
    assertEquals(status.signal, "SIGKILL");
    assert(!(await Deno.lstat(`${dir}/out.jsonl`).then(() => true, () => false)));
    const { backend, stats } = echoBackend();
    const s = await runBatch({
      input: `${dir}/in.jsonl`,
      output: `${dir}/out.jsonl`,
      backend,
      resume: true,
      progress: QUIET,
    });
    const out = await readOut(`${dir}/out.jsonl`);
    const ids = successIds(out);
    assertEquals(ids.length, n);
    assertEquals(new Set(ids).size, n);
    assert(stats.calls.length <= n - 30 + 4, `resume re-ran ${stats.calls.length}`);
    assertEquals([s.status, s.succeeded], ["completed", n]);
  }));

for (const order of ["completion", "input"] as const) {
  Deno.test(
    `an EngineFailure stops the run as failed with no line for its request; resume ends it (${order} order)`,
    () =>
      withDir(async (dir) => {
        const n = 20;
        await Deno.writeTextFile(`${dir}/in.jsonl`, jsonl(n));
        const echo = echoBackend();
        let calls = 0;
        let fail = () => {};
        const failure = new Promise<never>((_, reject) => {
          fail = () => reject(new EngineFailure("The compute backend failed at engine step 9"));
        });
        // The 7th request meets the failure once the two after it are running;
        // they still answer (and, in input order, wait for the 7th to be passed over).
        const broken: BatchBackend = {
          ...echo.backend,
          run: (url, body, ctx) => {
            if (++calls === 7) return failure;
            if (calls === 9) fail();
            return echo.backend.run(url, body, ctx);
          },
        };
        const failed = await runBatch({
          input: `${dir}/in.jsonl`,
          output: `${dir}/out.jsonl`,
          backend: broken,
          maxInFlight: 3,
          order,
          progress: QUIET,
        });
        assertEquals(failed.status, "failed");
        assert(failed.error?.includes("engine step 9") && failed.error.includes("--resume"));
        const kept = await readOut(`${dir}/out.jsonl.partial`);
        assertEquals(successIds(kept).length, kept.length, "no line for the failed request");
        assertEquals(kept.length, failed.succeeded, "every answer given was written");
        assert(kept.length >= 8 && !successIds(kept).includes("r6"), successIds(kept).join());
        const resumed = await runBatch({
          input: `${dir}/in.jsonl`,
          output: `${dir}/out.jsonl`,
          backend: echoBackend().backend,
          resume: true,
          progress: QUIET,
        });
        assertEquals([resumed.status, resumed.succeeded], ["completed", n]);
        const all = await readOut(`${dir}/out.jsonl`);
        assertEquals(successIds(all).sort(), Array.from({ length: n }, (_, i) => `r${i}`).sort());
      }),
  );
}
