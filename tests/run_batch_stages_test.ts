/**
 * The stages of a batch run, each alone: admitting a line, executing a
 * request, turning its outcome into an answer, emitting answers in order, the
 * stop state, and the path checks that run before anything is loaded.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertRejects } from "./_assert.ts";
import {
  admitLine,
  answerFor,
  type BatchBackend,
  Emitter,
  executeRequest,
  Slots,
  Stopper,
} from "../io/batch_stages.ts";
import type { OutputSink } from "../io/writer.ts";
import { preflightBatch } from "../io/preflight.ts";
import { describeFsError } from "../io/reader.ts";
import { RequestError } from "../engine/types.ts";

const backend: BatchBackend = {
  urls: ["/v1/completions"],
  validate(_url, body) {
    if (typeof (body as { prompt?: unknown }).prompt !== "string") {
      throw new RequestError("expected a string", 400, "prompt");
    }
  },
  run: (_url, body) =>
    Promise.resolve({ echo: body, usage: { prompt_tokens: 2, completion_tokens: 3 } }),
};

const line = (
  lineNo: number,
  customId: string,
  url = "/v1/completions",
  prompt: unknown = "hi",
) => ({
  lineNo,
  text: JSON.stringify({ custom_id: customId, method: "POST", url, body: { prompt } }),
});

Deno.test("admitLine turns a valid line into a request and remembers its custom_id", () => {
  const seen = new Set<string>();
  const a = admitLine(line(1, "a"), { backend, answered: new Set(), seen });
  assertEquals(a.kind, "request");
  assert(seen.has("a"));
});

Deno.test("admitLine names the line and field of a duplicate, an unsupported url and a bad body", () => {
  const ctx = { backend, answered: new Set<string>(), seen: new Set<string>() };
  admitLine(line(1, "a"), ctx);
  const cases: [ReturnType<typeof line>, string, string][] = [
    [line(2, "a"), "duplicate_custom_id", 'line 2: field "custom_id": duplicate "a"'],
    [line(3, "b", "/v1/nope"), "unsupported_url", 'line 3: field "url": unsupported "/v1/nope"'],
    [line(4, "c", "/v1/completions", 7), "invalid_field", 'line 4: field "body.prompt"'],
  ];
  for (const [input, code, message] of cases) {
    const a = admitLine(input, ctx);
    assert(a.kind === "invalid", `line ${input.lineNo} is invalid`);
    assertEquals(a.error.code, code);
    assert(a.error.message.startsWith(message), a.error.message);
  }
  const unreadable = admitLine({ lineNo: 5, error: "line 5: not valid UTF-8" }, ctx);
  assert(unreadable.kind === "invalid");
  assertEquals(unreadable.error.message, "line 5: not valid UTF-8");
});

Deno.test("admitLine skips an id answered by an earlier run once, then calls a repeat a duplicate", () => {
  const ctx = { backend, answered: new Set(["a"]), seen: new Set<string>() };
  assertEquals(admitLine(line(1, "a"), ctx).kind, "resumed");
  assertEquals(admitLine(line(2, "a"), ctx).kind, "invalid");
});

const request = {
  lineNo: 9,
  customId: "x",
  method: "POST" as const,
  url: "/v1/completions",
  body: { prompt: "hi" },
};

Deno.test("executeRequest resolves ok, error, or aborted with the reason", async () => {
  const ok = await executeRequest(backend, request, new AbortController());
  assertEquals(ok.kind, "ok");
  const failing: BatchBackend = { ...backend, run: () => Promise.reject(new Error("boom")) };
  const error = await executeRequest(failing, request, new AbortController());
  assert(error.kind === "error");
  assertEquals((error.error as Error).message, "boom");
  const hanging: BatchBackend = { ...backend, run: () => new Promise(() => {}) };
  assertEquals(await executeRequest(hanging, request, new AbortController(), 5), {
    kind: "aborted",
    reason: "timeout",
  });
  const controller = new AbortController();
  const pending = executeRequest(hanging, request, controller);
  controller.abort("expired");
  assertEquals(await pending, { kind: "aborted", reason: "expired" });
});

Deno.test("answerFor maps each outcome to its line and how it counts", () => {
  const ok = answerFor(request, {
    kind: "ok",
    value: { usage: { prompt_tokens: 2, completion_tokens: 3 } },
  });
  assertEquals([ok.customId, ok.counts, ok.code, ok.promptTokens, ok.completionTokens], [
    "x",
    "succeeded",
    null,
    2,
    3,
  ]);
  assertEquals(JSON.parse(ok.line).response.status_code, 200);
  const bad = answerFor(request, { kind: "error", error: new RequestError("nope", 400, "prompt") });
  assertEquals(bad.counts, "failed");
  assertEquals(JSON.parse(bad.line).response.status_code, 400);
  assertMatch(JSON.parse(bad.line).response.body.error.message, /^line 9: nope/);
  const internal = answerFor(request, { kind: "error", error: new Error("gpu gone") });
  assertEquals(JSON.parse(internal.line).response.body.error.code, "internal_error");
  const expectations: [unknown, string, string][] = [
    ["timeout", "request_timeout", "failed"],
    ["expired", "batch_expired", "cancelled"],
    ["cancelled", "batch_cancelled", "cancelled"],
  ];
  for (const [reason, code, counts] of expectations) {
    const a = answerFor(request, { kind: "aborted", reason }, 100);
    assertEquals(JSON.parse(a.line).error.code, code);
    assertEquals([a.counts, a.code], [counts, code]);
  }
});

/** A sink that records lines in memory. */
function memorySink(): OutputSink & { lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    partialPath: null,
    answered: new Set(),
    write: (l) => (lines.push(l), Promise.resolve()),
    commit: () => Promise.resolve({ path: "-" }),
    keep: () => Promise.resolve(null),
  };
}

Deno.test("Emitter in input order holds an answer until every earlier one is written", () => {
  const sink = memorySink();
  const errSink = memorySink();
  const emitter = new Emitter({
    sink,
    errSink,
    slots: new Slots(4),
    order: "input",
    onWriteError: () => {},
  });
  emitter.emit(2, "c", true);
  emitter.emit(1, "b-failed", false);
  assertEquals(sink.lines, []);
  emitter.emit(0, "a", true);
  assertEquals(sink.lines, ["a", "c"]);
  assertEquals(errSink.lines, ["b-failed"], "failures go to the error file");
});

Deno.test("Emitter frees a slot once the line is written", async () => {
  const slots = new Slots(1);
  await slots.acquire();
  let acquired = false;
  slots.acquire().then(() => (acquired = true));
  const emitter = new Emitter({
    sink: memorySink(),
    errSink: null,
    slots,
    order: "completion",
    onWriteError: () => {},
  });
  emitter.emit(0, "a", true);
  await new Promise((r) => setTimeout(r, 0));
  assert(acquired, "the waiting acquire got the freed slot");
});

Deno.test("Stopper keeps the first reason and aborts in-flight requests only when asked", () => {
  const stopper = new Stopper();
  const c = new AbortController();
  stopper.inFlight.add(c);
  stopper.halt("cancelled");
  assertEquals(c.signal.aborted, false);
  stopper.halt("expired", "expired");
  assertEquals(stopper.reason, "cancelled");
  assertEquals(c.signal.reason, "expired");
});

Deno.test("preflightBatch refuses a missing input and an existing output, writing nothing", async () => {
  const dir = await Deno.makeTempDir();
  const input = join(dir, "in.jsonl");
  await assertRejects(
    () => preflightBatch({ input, output: join(dir, "out", "o.jsonl") }),
    /^InputError: Cannot read input ".*in\.jsonl": it does not exist/,
  );
  await Deno.writeTextFile(input, "");
  await Deno.writeTextFile(join(dir, "o.jsonl"), "");
  await assertRejects(
    () => preflightBatch({ input, output: join(dir, "o.jsonl") }),
    /^OutputError: Output ".*o\.jsonl" already exists: pass --overwrite/,
  );
  await Deno.writeTextFile(join(dir, "p.jsonl.partial"), "");
  await assertRejects(
    () => preflightBatch({ input, output: join(dir, "p.jsonl") }),
    /^OutputError: Found ".*p\.jsonl\.partial" from an interrupted run: pass --resume/,
  );
  await preflightBatch({ input, output: join(dir, "o.jsonl"), overwrite: true });
  await preflightBatch({ input, output: join(dir, "p.jsonl"), resume: true });
  const names = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  assertEquals(
    names.sort(),
    ["in.jsonl", "o.jsonl", "p.jsonl.partial"],
    "no probe or partial left",
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("preflightBatch creates missing output, error-file and summary folders", async () => {
  const dir = await Deno.makeTempDir();
  const input = join(dir, "in.jsonl");
  await Deno.writeTextFile(input, "");
  await preflightBatch({
    input,
    output: join(dir, "a", "b", "o.jsonl"),
    errorFile: join(dir, "e", "err.jsonl"),
    summaryFile: join(dir, "s", "summary.json"),
  });
  for (const folder of ["a/b", "e", "s"]) {
    assert((await Deno.stat(join(dir, folder))).isDirectory, `${folder} exists`);
    assertEquals([...Deno.readDirSync(join(dir, folder))].length, 0, `${folder} is empty`);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("file-system errors are told in words, never as os error N", () => {
  const cases: [Error, string][] = [
    [
      new Deno.errors.NotFound("No such file or directory (os error 2): open 'x'"),
      "it does not exist",
    ],
    [
      new Deno.errors.PermissionDenied("Permission denied (os error 13): open 'x'"),
      "permission denied",
    ],
    [new Deno.errors.IsADirectory("Is a directory (os error 21)"), "it is a directory"],
    [new Error("Disk quota exceeded (os error 122): write 'x'"), "Disk quota exceeded"],
  ];
  for (const [error, words] of cases) assertEquals(describeFsError(error), words);
});
