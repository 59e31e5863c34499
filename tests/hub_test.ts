/**
 * `--model owner/name`: downloads from a fake hub on 127.0.0.1 into a
 * temporary cache, with tokens, resumed transfers, sharded checkpoints and
 * the errors a user sees.
 */
import { join } from "node:path";
import { assert, assertEquals, assertMatch, assertRejects } from "./_assert.ts";
import { ignoreWithoutGpu } from "./_gpu.ts";
import { startServer, type TestServer } from "./_http_servers.ts";
import { downloadModel, type DownloadProgress, parseModelRef } from "../engine/loader/hub.ts";

const TINY = "models/ernie-tiny";
const SHA = "0123456789abcdef0123456789abcdef01234567";

/** What the fake hub saw of one request. */
interface Seen {
  readonly path: string;
  readonly range: string | null;
  readonly authorization: string | null;
}

interface FakeHubOptions {
  /** Repo id → file name → bytes. */
  readonly repos: Record<string, Record<string, Uint8Array<ArrayBuffer>>>;
  /** Every request must carry `Authorization: Bearer ${token}`. */
  readonly token?: string;
  /** The first full GET of this file sends half of it and drops the connection. */
  readonly breakFile?: string;
}

/** A hub with the revision API and `resolve` downloads (Range included). */
function startFakeHub(options: FakeHubOptions): TestServer & { seen: Seen[] } {
  const seen: Seen[] = [];
  let broken = false;
  const server = startServer((req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    const range = req.headers.get("range");
    const authorization = req.headers.get("authorization");
    seen.push({ path, range, authorization });
    if (options.token && authorization !== `Bearer ${options.token}`) {
      return Response.json({ error: "Invalid credentials" }, { status: 401 });
    }
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/(.+)$/.exec(path);
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
    const files = options.repos[(api ?? resolve)?.[1] ?? ""];
    if (!files) {
      return Response.json({ error: "Repository not found" }, {
        status: 404,
        headers: { "X-Error-Code": "RepoNotFound" },
      });
    }
    if (api) {
      const siblings = Object.keys(files).map((rfilename) => ({ rfilename }));
      return Response.json({ _id: "x", id: api[1], sha: SHA, siblings });
    }
    const body = files[resolve![3]!];
    if (!body) return new Response("Entry not found", { status: 404 });
    const linked = { "X-Linked-Size": String(body.length) };
    if (resolve![3] === options.breakFile && !broken && range === null) {
      broken = true;
      return brokenBody(body.subarray(0, body.length >> 1));
    }
    const start = range ? Number(/^bytes=(\d+)-$/.exec(range)?.[1]) : 0;
    if (start === 0) return new Response(body, { headers: linked });
    return new Response(body.subarray(start), {
      status: 206,
      headers: { ...linked, "Content-Range": `bytes ${start}-${body.length - 1}/${body.length}` },
    });
  });
  return { ...server, seen };
}

/** A body that sends `prefix` and then breaks the connection. */
function brokenBody(prefix: Uint8Array<ArrayBuffer>): Response {
  return new Response(
    new ReadableStream<Uint8Array>({
      start(out) {
        out.enqueue(prefix);
      },
      async pull(out) {
        await new Promise((r) => setTimeout(r, 20));
        out.error(new Error("connection dropped by the fake hub"));
      },
    }),
  );
}

async function tinyFiles(): Promise<Record<string, Uint8Array<ArrayBuffer>>> {
  const files: Record<string, Uint8Array<ArrayBuffer>> = {};
  for await (const e of Deno.readDir(TINY)) files[e.name] = await Deno.readFile(join(TINY, e.name));
  return files;
}

async function withCache(fn: (cacheDir: string) => Promise<void>) {
  const cacheDir = await Deno.makeTempDir({ prefix: "hub_test_" });
  try {
    await fn(cacheDir);
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
}

const downloads = (hub: { seen: Seen[] }) => hub.seen.filter((s) => s.path.includes("/resolve/"));

Deno.test("a hub id downloads the model's files byte for byte into the cache", async () => {
  const files = await tinyFiles();
  const hub = startFakeHub({
    repos: { "owner/tiny": { ...files, "README.md": new Uint8Array(9) } },
  });
  await withCache(async (cacheDir) => {
    const progress: DownloadProgress[] = [];
    const dir = await downloadModel("owner/tiny", {
      cacheDir,
      endpoint: hub.url,
      onProgress: (p) => progress.push(p),
    });
    assertEquals(dir, join(cacheDir, "models--owner--tiny", "snapshots", SHA));
    assertEquals(
      await Deno.readTextFile(join(cacheDir, "models--owner--tiny", "refs", "main")),
      SHA,
    );
    const got = new Set<string>();
    for await (const e of Deno.readDir(dir)) got.add(e.name);
    assertEquals(got, new Set(Object.keys(files)), "README.md is not needed");
    for (const [name, bytes] of Object.entries(files)) {
      assertEquals(await Deno.readFile(join(dir, name)), bytes, name);
    }
    const last = progress.findLast((p) => p.file === "model.safetensors");
    assertEquals(last, {
      file: "model.safetensors",
      received: files["model.safetensors"]!.length,
      total: files["model.safetensors"]!.length,
    });
    assert(downloads(hub).every((s) => s.path.includes(`/resolve/${SHA}/`)), "files come by sha");
  });
  await hub.close();
});

Deno.test("a second call with everything cached downloads nothing", async () => {
  const hub = startFakeHub({ repos: { "owner/tiny": await tinyFiles() } });
  await withCache(async (cacheDir) => {
    const first = await downloadModel("owner/tiny", { cacheDir, endpoint: hub.url });
    const before = hub.seen.length;
    const second = await downloadModel("owner/tiny", { cacheDir, endpoint: hub.url });
    assertEquals(second, first);
    assertEquals(hub.seen.slice(before).map((s) => s.path), [
      "/api/models/owner/tiny/revision/main",
    ]);
    // Offline, or pinned to a commit, the cached snapshot needs no request at all.
    const offline = await downloadModel("owner/tiny", {
      cacheDir,
      endpoint: hub.url,
      offline: true,
    });
    const pinned = await downloadModel(`owner/tiny@${SHA}`, { cacheDir, endpoint: hub.url });
    assertEquals([offline, pinned], [first, first]);
    assertEquals(hub.seen.length, before + 1);
  });
  await hub.close();
});

Deno.test("the token is sent as a Bearer header, and without it the error says to set HF_TOKEN", async () => {
  const hub = startFakeHub({ repos: { "owner/tiny": await tinyFiles() }, token: "s3cret" });
  await withCache(async (cacheDir) => {
    await assertRejects(
      () => downloadModel("owner/tiny", { cacheDir, endpoint: hub.url }),
      /"owner\/tiny".*HTTP 401.*set HF_TOKEN/,
    );
    const dir = await downloadModel("owner/tiny", { cacheDir, endpoint: hub.url, token: "s3cret" });
    assert((await Deno.stat(join(dir, "model.safetensors"))).isFile);
    assert(hub.seen.slice(1).every((s) => s.authorization === "Bearer s3cret"));
  });
  await hub.close();
});

Deno.test("a download cut mid-file keeps .incomplete and the next call resumes it with Range", async () => {
  const files = await tinyFiles();
  const hub = startFakeHub({ repos: { "owner/tiny": files }, breakFile: "model.safetensors" });
  await withCache(async (cacheDir) => {
    const snapshot = join(cacheDir, "models--owner--tiny", "snapshots", SHA);
    await assertRejects(
      () => downloadModel("owner/tiny", { cacheDir, endpoint: hub.url, retries: 0 }),
      /model\.safetensors broke off after \d+ bytes.*run again to resume/,
    );
    const kept = (await Deno.stat(join(snapshot, "model.safetensors.incomplete"))).size;
    assert(kept > 0, "part of the file was kept");
    const dir = await downloadModel("owner/tiny", { cacheDir, endpoint: hub.url });
    const resumed = downloads(hub).filter((s) => s.path.endsWith("/model.safetensors"));
    assertEquals(resumed.map((s) => s.range), [null, `bytes=${kept}-`]);
    assertEquals(await Deno.readFile(join(dir, "model.safetensors")), files["model.safetensors"]);
    assertEquals(
      await Deno.stat(join(dir, "model.safetensors.incomplete")).catch(() => null),
      null,
    );
  });
  await hub.close();
});

Deno.test("a broken transfer is retried within the same call, resuming where it stopped", async () => {
  const files = await tinyFiles();
  const hub = startFakeHub({ repos: { "owner/tiny": files }, breakFile: "model.safetensors" });
  await withCache(async (cacheDir) => {
    const dir = await downloadModel("owner/tiny", { cacheDir, endpoint: hub.url });
    const ranges = downloads(hub).filter((s) => s.path.endsWith("/model.safetensors"));
    assertEquals(ranges.length, 2);
    assertMatch(ranges[1]!.range ?? "", /^bytes=[1-9]\d*-$/);
    assertEquals(await Deno.readFile(join(dir, "model.safetensors")), files["model.safetensors"]);
  });
  await hub.close();
});

Deno.test("a sharded checkpoint downloads the index and every shard it names", async () => {
  const { "model.safetensors": _, ...rest } = await tinyFiles();
  const shard = (n: number) => `model-0000${n}-of-00002.safetensors`;
  const index = { metadata: {}, weight_map: { a: shard(1), b: shard(2), c: shard(1) } };
  const files = {
    ...rest,
    "model.safetensors.index.json": new TextEncoder().encode(JSON.stringify(index)),
    [shard(1)]: new Uint8Array([1, 2, 3]),
    [shard(2)]: new Uint8Array([4, 5]),
    "model-00003-of-00003.safetensors": new Uint8Array([6]), // named by no index: not fetched
  };
  const hub = startFakeHub({ repos: { "owner/big": files } });
  await withCache(async (cacheDir) => {
    const dir = await downloadModel("owner/big", { cacheDir, endpoint: hub.url });
    assertEquals(await Deno.readFile(join(dir, shard(1))), new Uint8Array([1, 2, 3]));
    assertEquals(await Deno.readFile(join(dir, shard(2))), new Uint8Array([4, 5]));
    assertEquals(
      await Deno.stat(join(dir, "model-00003-of-00003.safetensors")).catch(() => null),
      null,
    );
  });
  await hub.close();
});

Deno.test("an unknown repo, a missing required file and an unreachable hub are clear errors", async () => {
  const { "config.json": _, ...noConfig } = await tinyFiles();
  const hub = startFakeHub({ repos: { "owner/noconfig": noConfig } });
  await withCache(async (cacheDir) => {
    await assertRejects(
      () => downloadModel("owner/missing", { cacheDir, endpoint: hub.url }),
      /"owner\/missing" at revision "main": no such model repo or file \(HTTP 404/,
    );
    await assertRejects(
      () => downloadModel("owner/noconfig", { cacheDir, endpoint: hub.url }),
      /"owner\/noconfig" at "main" has no config\.json/,
    );
    await assertRejects(
      () => downloadModel("owner/tiny", { cacheDir, endpoint: "http://127.0.0.1:9" }),
      /Cannot reach the hub at http:\/\/127\.0\.0\.1:9\/api\/models\/owner\/tiny\/revision\/main/,
    );
    await assertRejects(
      () => downloadModel("owner/tiny", { cacheDir, offline: true }),
      /offline.*no complete snapshot/,
    );
  });
  await hub.close();
});

Deno.test("hub ids are owner/name with an optional @revision", () => {
  assertEquals(parseModelRef("baidu/ERNIE-4.5-0.3B-PT"), {
    repo: "baidu/ERNIE-4.5-0.3B-PT",
    revision: "main",
  });
  assertEquals(parseModelRef("a/b@refs/pr/1"), { repo: "a/b", revision: "refs/pr/1" });
  for (const bad of ["tiny", "a/b/c", "../x", "a/b@../../etc", "/abs/path", "a b/c"]) {
    assertEquals(parseModelRef(bad), null, bad);
  }
});

Deno.test({
  name: "run-batch --model owner/name downloads the model and answers the batch",
  ignore: ignoreWithoutGpu,
  async fn() {
    const hub = startFakeHub({ repos: { "owner/tiny": await tinyFiles() } });
    const home = await Deno.makeTempDir({ prefix: "hub_cli_" });
    try {
      const output = join(home, "out.jsonl");
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "cli.ts",
          "run-batch",
          "--model",
          "owner/tiny",
          "-i",
          "examples/input.jsonl",
          "-o",
          output,
          "--quiet",
        ],
        env: {
          HF_ENDPOINT: hub.url,
          HF_HOME: home,
          XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp",
          NO_COLOR: "1",
        },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assertEquals(out.code, 0, stderr);
      const inputs = (await Deno.readTextFile("examples/input.jsonl")).trim().split("\n");
      const lines = (await Deno.readTextFile(output)).trim().split("\n");
      assertEquals(lines.length, inputs.length);
      assert(await Deno.stat(join(home, "hub", "models--owner--tiny", "snapshots", SHA)));
    } finally {
      await hub.close();
      await Deno.remove(home, { recursive: true });
    }
  },
});
