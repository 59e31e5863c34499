/**
 * The Node.js package (`deno task build:node`): built into a temporary folder,
 * its dependencies installed with npm, then run with `node` as a user would.
 * `--version`, `--help`, `--validate-only`, `merge`, the library's exports and
 * a library batch on the wasm backend (its threads on worker_threads, answers
 * equal to Deno's) and a `run-batch` on it run everywhere; a WebGPU batch runs
 * where Dawn (the `webgpu` package) finds an adapter, and is skipped with one
 * line saying why elsewhere: Dawn rejects Mesa's lavapipe (and SwiftShader
 * aborts), so a CPU-only machine has none.
 * BATCHWRIGHT_REQUIRE_GPU does not apply: CI's adapter is lavapipe.
 */
import { assert, assertEquals } from "./_assert.ts";
import { join, resolve } from "node:path";
import { buildNode } from "../tools/build_node.ts";
import { type BatchAnswer, Batchwright } from "../mod.ts";

const ROOT = resolve(import.meta.dirname!, "..");
const dec = new TextDecoder();

async function run(cmd: string, args: string[], cwd: string) {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", NO_COLOR: "1" },
    // A hung child (a worker that never answers) fails the test instead of stalling it.
    signal: AbortSignal.timeout(300_000),
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function hasNode(): Promise<boolean> {
  try {
    const v = (await run("node", ["--version"], ROOT)).stdout.trim();
    return Number(v.match(/^v(\d+)/)?.[1]) >= 20;
  } catch {
    return false;
  }
}

/** The one-line probe: Dawn's adapter, or why there is none. */
const PROBE = `
import "batchwright";
const adapter = await navigator.gpu.requestAdapter();
console.log(adapter ? "adapter " + (adapter.info.description || adapter.info.vendor) : "none");
`;

/** Greedy requests of every endpoint, for the wasm backend under node and under Deno. */
const WASM_LINES = [
  {
    custom_id: "chat",
    method: "POST",
    url: "/v1/chat/completions",
    body: { messages: [{ role: "user", content: "Hello there" }], max_tokens: 12, temperature: 0 },
  },
  {
    custom_id: "completion",
    method: "POST",
    url: "/v1/completions",
    body: { prompt: "The capital of France is", max_tokens: 9, temperature: 0 },
  },
  { custom_id: "embedding", method: "POST", url: "/v1/embeddings", body: { input: "batch" } },
];

/** What must agree between runtimes: the answers' bodies without their random ids and times. */
function comparable(answers: BatchAnswer[]) {
  return Object.fromEntries(answers.map((a) => {
    const body = a.response?.body as Record<string, unknown> & { choices?: unknown[] };
    const { id: _id, created: _created, ...rest } = body;
    return [a.custom_id, rest];
  }));
}

const lines = (text: string) => text.split("\n").filter(Boolean).map((l) => JSON.parse(l));

Deno.test({
  name: "the Node.js package runs run-batch, merge and the library with node",
  ignore: !(await hasNode()),
  sanitizeResources: false,
  async fn(t) {
    const tmp = await Deno.makeTempDir({ prefix: "batchwright-node-test-" });
    try {
      const pkg = await buildNode({ out: join(tmp, "pkg") });
      const install = await run("npm", ["install", "--no-audit", "--no-fund", "--silent"], pkg);
      assertEquals(install.code, 0, `npm install failed: ${install.stderr}`);
      const cli = join(pkg, "cli.mjs");
      const node = (...args: string[]) => run("node", [cli, ...args], ROOT);

      await t.step("--version names node and the package version", async () => {
        const r = await node("--version");
        assertEquals(r.code, 0, r.stderr);
        assert(/^batchwright \d+\.\d+\.\d+ \(node \d+\./.test(r.stdout), r.stdout);
      });

      await t.step("--help lists run-batch's flags", async () => {
        const r = await node("run-batch", "--help");
        assertEquals(r.code, 0, r.stderr);
        for (const flag of ["--model", "--input-file", "--shard", "--metrics-port"]) {
          assert(r.stdout.includes(flag), `--help lacks ${flag}`);
        }
        assertEquals((await node("run-batch")).code, 2, "a missing flag is a usage error");
      });

      await t.step("--validate-only reads the input and loads the tokenizer", async () => {
        const r = await node(
          "run-batch",
          "--model",
          "models/ernie-tiny",
          "-i",
          "examples/input.jsonl",
          "-o",
          join(tmp, "validated.jsonl"),
          "--validate-only",
        );
        // examples/input.jsonl's line 7 is invalid on purpose: exit 1, naming it.
        assertEquals(r.code, 1, r.stderr);
        assert(r.stderr.includes('line 7: field "body.messages"'), r.stderr);
        assert(/validated: 0\/8 succeeded, 1 failed/.test(r.stderr), r.stderr);
      });

      await t.step("merge joins shard outputs in input order", async () => {
        const answer = (id: string) =>
          JSON.stringify({
            id: `batch_req_${id}`,
            custom_id: id,
            response: { status_code: 200, request_id: id, body: {} },
            error: null,
          });
        const input = [1, 2, 3].map((i) =>
          JSON.stringify({ custom_id: `r${i}`, method: "POST", url: "/v1/embeddings", body: {} })
        );
        await Deno.writeTextFile(join(tmp, "in.jsonl"), input.join("\n") + "\n");
        await Deno.writeTextFile(join(tmp, "s0.jsonl"), answer("r3") + "\n" + answer("r1") + "\n");
        await Deno.writeTextFile(join(tmp, "s1.jsonl"), answer("r2") + "\n");
        const out = join(tmp, "merged.jsonl");
        const r = await node(
          "merge",
          "-o",
          out,
          "--input",
          join(tmp, "in.jsonl"),
          join(tmp, "s0.jsonl"),
          join(tmp, "s1.jsonl"),
        );
        assertEquals(r.code, 0, r.stderr);
        const merged = lines(await Deno.readTextFile(out));
        assertEquals(merged.map((a) => a.custom_id), ["r1", "r2", "r3"]);
      });

      await t.step("the library's exports resolve by package name", async () => {
        const script = join(pkg, "exports.mjs");
        await Deno.writeTextFile(
          script,
          `import * as bw from "batchwright";
console.log(["Batchwright", "Engine", "runBatch", "ApiBackend", "formatSummary"]
  .map((n) => typeof bw[n]).join(" "));`,
        );
        const r = await run("node", [script], pkg);
        assertEquals(r.code, 0, r.stderr);
        assertEquals(r.stdout.trim(), "function function function function function");
      });

      await t.step(
        "the library runs a batch on the wasm backend, answering as under Deno",
        async () => {
          const script = join(pkg, "wasm.mjs");
          await Deno.writeTextFile(
            script,
            `import { Batchwright } from "batchwright";
const llm = await Batchwright.load(${JSON.stringify(join(ROOT, "models/ernie-tiny"))}, {
  backend: "wasm",
  threads: 2,
});
const answers = [];
for await (const a of llm.batch(${JSON.stringify(WASM_LINES)})) answers.push(a);
await llm.close();
console.log(JSON.stringify(answers));`,
          );
          const r = await run("node", [script], pkg);
          assertEquals(r.code, 0, r.stderr);
          const onNode = JSON.parse(r.stdout) as BatchAnswer[];
          assertEquals(onNode.map((a) => a.response?.status_code), [200, 200, 200]);
          const llm = await Batchwright.load("models/ernie-tiny", { backend: "wasm", threads: 2 });
          const onDeno: BatchAnswer[] = [];
          try {
            for await (const a of llm.batch(WASM_LINES)) onDeno.push(a);
          } finally {
            await llm.close();
          }
          assertEquals(comparable(onNode), comparable(onDeno));
        },
      );

      /** `node cli.mjs run-batch` on examples/input.jsonl; checks the answers. */
      const realBatch = async (backend: string, name: string) => {
        const out = join(tmp, `out-${name}.jsonl`);
        const args = ["-i", join(ROOT, "examples/input.jsonl"), "-o", out, "--order", "input"];
        // From an empty folder: models/ernie-tiny is the one the package ships beside cli.mjs.
        const empty = await Deno.makeTempDir({ dir: tmp });
        const r = await run(
          "node",
          [cli, "run-batch", "--model", "models/ernie-tiny", ...args, "--backend", backend],
          empty,
        );
        // Line 7 is invalid on purpose: the run completes and exits 0 with its 400.
        assertEquals(r.code, 0, r.stderr);
        assert(r.stderr.includes(`ernie-tiny on ${name}`), `not run on ${name}: ${r.stderr}`);
        const answers = lines(await Deno.readTextFile(out));
        assertEquals(
          answers.map((a) => a.response?.status_code),
          [200, 200, 200, 200, 200, 200, 400, 200],
        );
        const embedding = answers[4].response.body.data[0].embedding as number[];
        const config = JSON.parse(await Deno.readTextFile("models/ernie-tiny/config.json"));
        assertEquals(embedding.length, config.hidden_size);
        assert(embedding.every(Number.isFinite), "embedding has non-finite values");
        assert(answers[0].response.body.usage.completion_tokens > 0, "no tokens generated");
      };

      await t.step("run-batch runs a real batch on the wasm backend", async () => {
        await realBatch("wasm", "wasm");
      });

      await Deno.writeTextFile(join(pkg, "probe.mjs"), PROBE);
      const probe = await run("node", [join(pkg, "probe.mjs")], pkg);
      assertEquals(probe.code, 0, `the adapter probe failed: ${probe.stderr}`);
      const adapter = probe.stdout.trim();
      if (adapter === "none") {
        console.log(
          "node_test: WebGPU batch skipped: Dawn found no WebGPU adapter here " +
            "(it rejects Mesa's lavapipe and SwiftShader aborts; it needs a GPU driver)",
        );
      }
      await t.step({
        name: `run-batch runs a real batch on WebGPU through Dawn (${adapter})`,
        ignore: adapter === "none",
        fn: () => realBatch("webgpu", "webgpu"),
      });
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
