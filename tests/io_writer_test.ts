import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { openOutput, type OutputSink, uploadFile } from "../io/writer.ts";
import { failureLine, successLine } from "../io/batch_format.ts";
import { startDroppingProxy, startServer } from "./_http_servers.ts";

const FAST_RETRY = { baseDelayMs: 10, maxDelayMs: 2000 };

/** A WritableStream that keeps what it was given, standing in for stdout. */
function memoryStdout(): { stream: WritableStream<Uint8Array>; text: () => string } {
  const chunks: Uint8Array[] = [];
  const stream = new WritableStream<Uint8Array>({ write: (c) => void chunks.push(c) });
  const decoder = new TextDecoder();
  return { stream, text: () => chunks.map((c) => decoder.decode(c)).join("") };
}

const exists = (p: string) => Deno.lstat(p).then(() => true, () => false);

/** Every output sink: opens it, and reads back what ended up at the destination. */
const SINKS: Record<
  string,
  (
    dir: string,
  ) => Promise<{ sink: OutputSink; read: () => Promise<string>; close: () => Promise<void> }>
> = {
  "local file": async (dir) => {
    const sink = await openOutput({ output: `${dir}/out.jsonl` });
    return {
      sink,
      read: () => Deno.readTextFile(`${dir}/out.jsonl`),
      close: async () => {},
    };
  },
  "URL (PUT)": async (dir) => {
    let stored = "";
    const server = startServer((_req, _ctx, body) => {
      stored = body;
      return new Response(null, { status: 201 });
    });
    const sink = await openOutput({ output: `${server.url}/out.jsonl`, outputTmpDir: dir });
    return { sink, read: () => Promise.resolve(stored), close: () => server.close() };
  },
  "stdout": async () => {
    const out = memoryStdout();
    return {
      sink: await openOutput({ output: "-", stdout: out.stream }),
      read: () => Promise.resolve(out.text()),
      close: async () => {},
    };
  },
};

for (const [name, open] of Object.entries(SINKS)) {
  Deno.test(`writer (${name}) delivers every line, in write order, newline-terminated`, async () => {
    const dir = await Deno.makeTempDir();
    const opened = await open(dir);
    const sink = opened.sink;
    try {
      const lines = Array.from({ length: 50 }, (_, i) => successLine(`r${i}`, { i }));
      await Promise.all(lines.map((l) => sink.write(l)));
      await sink.commit();
      assertEquals(await opened.read(), lines.join("\n") + "\n");
    } finally {
      await opened.close();
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("writer keeps lines in OUTPUT.partial until commit renames it into place", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sink = await openOutput({ output: `${dir}/out.jsonl` });
    await sink.write(successLine("a", {}));
    assertEquals(sink.partialPath, `${dir}/out.jsonl.partial`);
    assertEquals((await Deno.readTextFile(`${dir}/out.jsonl.partial`)).split("\n").length, 2);
    assert(!(await exists(`${dir}/out.jsonl`)));
    await sink.commit();
    assert(await exists(`${dir}/out.jsonl`));
    assert(!(await exists(`${dir}/out.jsonl.partial`)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writer refuses an existing output, a leftover partial, and the input itself", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/out.jsonl`, "old\n");
    await assertRejects(
      () => openOutput({ output: `${dir}/out.jsonl` }),
      /already exists.*--overwrite/,
    );
    await Deno.writeTextFile(`${dir}/b.jsonl.partial`, "");
    await assertRejects(
      () => openOutput({ output: `${dir}/b.jsonl` }),
      /interrupted run.*--resume/,
    );
    await assertRejects(
      () => openOutput({ output: `${dir}/in.jsonl`, input: `${dir}/in.jsonl`, overwrite: true }),
      /over the input/,
    );
    const sink = await openOutput({ output: `${dir}/out.jsonl`, overwrite: true });
    await sink.commit();
    assertEquals(await Deno.readTextFile(`${dir}/out.jsonl`), "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writer resume keeps one success per custom_id and drops failures and torn lines", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/out.jsonl`;
    await Deno.writeTextFile(
      out,
      [successLine("a", {}), failureLine("b", "batch_cancelled", "x")].join("\n") + "\n",
    );
    const torn = successLine("d", {}).slice(0, 30);
    await Deno.writeTextFile(
      `${out}.partial`,
      [successLine("a", {}), successLine("c", {}), torn].join("\n"),
    );
    const sink = await openOutput({ output: out, resume: true });
    assertEquals([...sink.answered].sort(), ["a", "c"]);
    await sink.write(successLine("b", {}));
    await sink.commit();
    const ids = (await Deno.readTextFile(out)).trim().split("\n").map((l) =>
      JSON.parse(l).custom_id
    );
    assertEquals(ids, ["a", "c", "b"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function withFile<T>(fn: (path: string) => Promise<T>): Promise<T> {
  const path = await Deno.makeTempFile();
  await Deno.writeTextFile(path, "line 1\nline 2\n");
  try {
    return await fn(path);
  } finally {
    await Deno.remove(path);
  }
}

Deno.test("upload retries a 500 and succeeds on the 200 after it", async () => {
  const server = startServer((_r, { index }) =>
    new Response(null, { status: index === 0 ? 500 : 200 })
  );
  try {
    await withFile((p) => uploadFile(p, `${server.url}/o`, FAST_RETRY));
    assertEquals(server.requests.map((r) => r.body), ["line 1\nline 2\n", "line 1\nline 2\n"]);
    assertEquals(server.requests[0]?.method, "PUT");
  } finally {
    await server.close();
  }
});

Deno.test("upload waits out a 429's Retry-After", async () => {
  const server = startServer((_r, { index }) =>
    index === 0
      ? new Response(null, { status: 429, headers: { "retry-after": "1" } })
      : new Response(null, { status: 204 })
  );
  try {
    const start = Date.now();
    await withFile((p) => uploadFile(p, `${server.url}/o`, FAST_RETRY));
    assert(Date.now() - start >= 900, "Retry-After: 1 was not honoured");
    assertEquals(server.requests.length, 2);
  } finally {
    await server.close();
  }
});

Deno.test("upload does not retry after any 2xx (201, 204)", async () => {
  for (const status of [200, 201, 204]) {
    const server = startServer(() => new Response(null, { status }));
    try {
      await withFile((p) => uploadFile(p, `${server.url}/o`, FAST_RETRY));
      assertEquals(server.requests.length, 1);
    } finally {
      await server.close();
    }
  }
});

Deno.test("upload retries a connection dropped mid-body", async () => {
  const server = startServer(() => new Response(null, { status: 201 }));
  const proxy = startDroppingProxy(server.port, 1);
  try {
    await withFile((p) => uploadFile(p, `${proxy.url}/o`, FAST_RETRY));
    assertEquals(proxy.accepted(), 2);
    assertEquals(server.requests.map((r) => r.body), ["line 1\nline 2\n"]);
  } finally {
    await proxy.close();
    await server.close();
  }
});

Deno.test("upload retries a server that hangs past the timeout", async () => {
  const server = startServer(async (_r, { index, closing }) => {
    if (index === 0) await closing;
    return new Response(null, { status: 200 });
  });
  try {
    await withFile((p) => uploadFile(p, `${server.url}/o`, { ...FAST_RETRY, timeoutMs: 300 }));
    // The first attempt hangs and is retried; a loaded machine may need more than one retry.
    assert(server.requests.length >= 2, `${server.requests.length} attempts`);
  } finally {
    await server.close();
  }
});

Deno.test("upload gives up on a 403 at once; a URL sink keeps the local file and names it", async () => {
  const server = startServer(() => new Response("no", { status: 403 }));
  const dir = await Deno.makeTempDir();
  try {
    const sink = await openOutput({
      output: `${server.url}/o.jsonl`,
      outputTmpDir: dir,
      upload: FAST_RETRY,
    });
    await sink.write(successLine("a", {}));
    const result = await sink.commit();
    assertEquals(server.requests.length, 1);
    assertEquals(result.path, `${dir}/o.jsonl.partial`);
    assert(result.error?.includes("HTTP 403") && result.error.includes(result.path));
    assert(await exists(result.path));
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});
