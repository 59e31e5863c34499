import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { countLocalLines, type InputLine, readLines } from "../io/reader.ts";
import { parseRequestLine, successfulCustomId, successLine } from "../io/batch_format.ts";
import { brokenBody, startServer } from "./_http_servers.ts";

const encoder = new TextEncoder();
const FIXTURE = '{"a":1}\n\n  \r\n{"b":"héllo 🌍"}\r\n{"c":3}';
const EXPECTED: InputLine[] = [
  { lineNo: 1, text: '{"a":1}' },
  { lineNo: 4, text: '{"b":"héllo 🌍"}' },
  { lineNo: 5, text: '{"c":3}' },
];

async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as BufferSource]).stream().pipeThrough(
    new CompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** A stream that hands out `bytes` one byte per chunk: every split point is exercised. */
function byteByByte(bytes: Uint8Array): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream({
    pull(out) {
      if (at >= bytes.byteLength) out.close();
      else out.enqueue(bytes.slice(at, ++at));
    },
  });
}

async function collect(input: string, options = {}): Promise<InputLine[]> {
  const lines: InputLine[] = [];
  for await (const line of readLines(input, options)) lines.push(line);
  return lines;
}

/** Every input source, as a function that yields the `readLines` arguments for some bytes. */
const SOURCES: Record<
  string,
  (bytes: Uint8Array, dir: string) => Promise<[string, object, () => Promise<void>]>
> = {
  "local file": async (bytes, dir) => {
    await Deno.writeFile(`${dir}/in.jsonl`, bytes);
    return [`${dir}/in.jsonl`, {}, async () => {}];
  },
  "gzip file": async (bytes, dir) => {
    await Deno.writeFile(`${dir}/in.jsonl.gz`, await gzip(bytes));
    return [`${dir}/in.jsonl.gz`, {}, async () => {}];
  },
  "URL": (bytes) => {
    const server = startServer(() => new Response(bytes as BufferSource));
    return Promise.resolve([`${server.url}/in.jsonl`, {}, () => server.close()]);
  },
  "gzip URL (application/gzip)": async (bytes) => {
    const gz = await gzip(bytes);
    const server = startServer(() =>
      new Response(gz as BufferSource, { headers: { "content-type": "application/gzip" } })
    );
    return [`${server.url}/in.jsonl.gz`, {}, () => server.close()];
  },
  "gzip URL (Content-Encoding: gzip)": async (bytes) => {
    const gz = await gzip(bytes);
    const server = startServer(() =>
      new Response(gz as BufferSource, { headers: { "content-encoding": "gzip" } })
    );
    return [`${server.url}/in.jsonl`, {}, () => server.close()];
  },
  "stdin (one byte per chunk)": (bytes) =>
    Promise.resolve(["-", { stdin: byteByByte(bytes) }, async () => {}]),
};

for (const [name, open] of Object.entries(SOURCES)) {
  Deno.test(`reader (${name}) numbers lines from 1, skips blank ones, strips CR`, async () => {
    const dir = await Deno.makeTempDir();
    const [input, options, close] = await open(encoder.encode(FIXTURE), dir);
    try {
      assertEquals(await collect(input, options), EXPECTED);
    } finally {
      await close();
      await Deno.remove(dir, { recursive: true });
    }
  });

  Deno.test(`reader (${name}) turns invalid UTF-8 and over-long lines into error lines and goes on`, async () => {
    const dir = await Deno.makeTempDir();
    const bytes = new Uint8Array([
      ...encoder.encode('{"ok":1}\n{"bad":"'),
      0xc3,
      0x28,
      ...encoder.encode(`"}\n${"x".repeat(300)}\n{"ok":2}\n`),
    ]);
    const [input, options, close] = await open(bytes, dir);
    try {
      assertEquals(await collect(input, { ...options, maxLineBytes: 100 }), [
        { lineNo: 1, text: '{"ok":1}' },
        { lineNo: 2, error: "line 2: invalid UTF-8" },
        { lineNo: 3, error: "line 3: longer than the maximum of 100 bytes" },
        { lineNo: 4, text: '{"ok":2}' },
      ]);
    } finally {
      await close();
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("reader yields nothing for an empty input", async () => {
  assertEquals(await collect("-", { stdin: byteByByte(new Uint8Array()) }), []);
});

Deno.test("reader names a missing file", async () => {
  await assertRejects(
    () => collect("/nonexistent/in.jsonl"),
    /Cannot read input "\/nonexistent\/in.jsonl"/,
  );
});

Deno.test("reader reports an HTTP error status", async () => {
  const server = startServer(() => new Response("gone", { status: 404 }));
  try {
    await assertRejects(() => collect(`${server.url}/in.jsonl`), /HTTP 404/);
  } finally {
    await server.close();
  }
});

Deno.test("reader reports a connection dropped mid-body after yielding the lines before it", async () => {
  const server = startServer(() => brokenBody('{"a":1}\n{"b":2}\n{"c":'));
  const got: InputLine[] = [];
  try {
    await assertRejects(async () => {
      for await (const line of readLines(`${server.url}/in.jsonl`)) got.push(line);
    }, /connection lost/);
    assertEquals(got.map((l) => l.lineNo), [1, 2]);
  } finally {
    await server.close();
  }
});

Deno.test("reader gives up on a server that hangs past the idle timeout", async () => {
  const server = startServer(async (_req, { closing }) => {
    await closing;
    return new Response("");
  });
  try {
    await assertRejects(
      () => collect(`${server.url}/in.jsonl`, { idleTimeoutMs: 200 }),
      /no data for 200 ms|no response within 200 ms/,
    );
  } finally {
    await server.close();
  }
});

Deno.test("reader reports corrupt gzip as an input error", async () => {
  const gz = await gzip(encoder.encode(FIXTURE.repeat(50)));
  const cut = gz.slice(0, gz.byteLength - 20);
  await assertRejects(() => collect("-", { stdin: byteByByte(cut) }), /Cannot read input "-"/);
});

Deno.test("countLocalLines counts non-blank lines of a plain file only", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/a.jsonl`, FIXTURE);
    assertEquals(await countLocalLines(`${dir}/a.jsonl`), 3);
    await Deno.writeFile(`${dir}/a.jsonl.gz`, await gzip(encoder.encode(FIXTURE)));
    assertEquals(await countLocalLines(`${dir}/a.jsonl.gz`), undefined);
    assertEquals(await countLocalLines("-"), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseRequestLine accepts a valid envelope", () => {
  const p = parseRequestLine(
    7,
    '{"custom_id":"r1","method":"POST","url":"/v1/completions","body":{"prompt":"hi"}}',
  );
  assert(p.ok);
  assertEquals(p.request, {
    lineNo: 7,
    customId: "r1",
    method: "POST",
    url: "/v1/completions",
    body: { prompt: "hi" },
  });
});

Deno.test("parseRequestLine names the line, the field and the reason", () => {
  const p = parseRequestLine(
    12,
    '{"custom_id":5,"method":"POST","url":"/v1/completions","body":{}}',
  );
  assert(!p.ok);
  assertEquals(p.error.message, 'line 12: field "custom_id": expected a string');
  assertEquals(p.error.customId, null);
  const q = parseRequestLine(
    3,
    '{"custom_id":"x","method":"PUT","url":"/v1/completions","body":{}}',
  );
  assert(!q.ok);
  assertEquals(q.error.message, 'line 3: field "method": expected "POST"');
  assertEquals([q.error.customId, q.error.code], ["x", "method_not_allowed"]);
});

Deno.test("output lines have the shape OpenAI clients parse", () => {
  const line = JSON.parse(successLine("r1", { usage: { total_tokens: 3 } }));
  assertEquals(Object.keys(line), ["id", "custom_id", "response", "error"]);
  assert(/^batch_req_[0-9a-f]{32}$/.test(line.id));
  assert(/^batchwright-batch-[0-9a-f]{32}$/.test(line.response.request_id));
  assertEquals(line.response.status_code, 200);
  assertEquals(line.error, null);
  assertEquals(successfulCustomId(JSON.stringify(line)), "r1");
  assertEquals(successfulCustomId('{"custom_id":"r1","response":{"status_'), null);
});

Deno.test("countLocalLines counts a shard's lines: non-blank ones whose 0-based index it keeps", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // Indices 0..6; index 2 is blank, index 6 has no final newline.
    await Deno.writeTextFile(`${dir}/a.jsonl`, "a\nb\n\nc\r\nd\ne\nf");
    const shard = (k: number) => countLocalLines(`${dir}/a.jsonl`, (i) => i % 3 === k);
    assertEquals([await shard(0), await shard(1), await shard(2)], [3, 2, 1]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
