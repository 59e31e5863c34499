/**
 * The single binary (`deno task compile`). `deno compile` fetches its runtime
 * (denort) from Deno's download host, which this machine cannot reach, so the
 * tests cover everything up to that download: the entry type-checks, every file
 * the binary reads at run time is embedded (in the module graph, or under a
 * `--include` path reached through a module's URL, never the working
 * directory), and the compile gets as far as the runtime. Where the runtime is
 * there (`DENORT_BIN`, or a reachable host), the binary is built and run from
 * an empty folder.
 */
import { assert, assertEquals } from "./_assert.ts";
import { join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { COMPILE_ENTRY, COMPILE_INCLUDES, compileArgs, compileError } from "../tools/compile.ts";

const ROOT = resolve(import.meta.dirname!, "..");
const dec = new TextDecoder();

async function deno(args: string[], cwd = ROOT) {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    env: { NO_COLOR: "1", XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The repository files in the compile entry's module graph (what `deno compile` embeds). */
async function moduleGraph(): Promise<string[]> {
  const info = await deno(["info", "--json", COMPILE_ENTRY]);
  assertEquals(info.code, 0, info.stderr);
  const modules = (JSON.parse(info.stdout) as { modules: { specifier: string }[] }).modules;
  return modules.map((m) => m.specifier).filter((s) => s.startsWith("file:"))
    .map((s) => relative(ROOT, fileURLToPath(s)));
}

/**
 * Every place a module of the graph names a file through its own URL, and
 * why the binary still has what it needs. A new one fails the test until its
 * files are embedded (COMPILE_INCLUDES) and it is listed here.
 */
const MODULE_RELATIVE: Record<string, string> = {
  'cli.ts: new URL("./models/", import.meta.url)': "models/ernie-tiny is a --include",
  "engine/grammar.ts: createRequire(import.meta.url)": "requires only Node built-ins",
};

Deno.test("the compile entry type-checks", async () => {
  const r = await deno(["check", COMPILE_ENTRY]);
  assertEquals(r.code, 0, r.stderr);
});

Deno.test("every file the binary reads at run time is embedded, none by working-directory path", async () => {
  const graph = await moduleGraph();
  // The shaders are text imports, so in the graph: none is read from disk at run time.
  const shaders = [...Deno.readDirSync(join(ROOT, "shaders"))].map((e) => `shaders/${e.name}`)
    .filter((f) => f.endsWith(".wgsl"));
  assert(shaders.length > 0);
  for (const s of shaders) assert(graph.includes(s), `${s} is not imported by ${COMPILE_ENTRY}`);

  const found: string[] = [];
  for (const file of graph.filter((f) => f.endsWith(".ts"))) {
    const source = await Deno.readTextFile(join(ROOT, file));
    const code = source.replace(/^\s*(\*|\/\/).*$/gm, ""); // comments and JSDoc out
    for (
      const m of code.matchAll(
        /(new URL\([^)]*import\.meta\.url\)|\w+\(import\.meta\.(?:url|dirname|filename)\)|import\.meta\.(?:dirname|filename|resolve))/g,
      )
    ) {
      found.push(`${file}: ${m[1]}`);
    }
    // A file opened by a literal path would be read relative to the working directory.
    const literal = code.match(
      /(?:Deno\.(?:readFile|readTextFile|open|stat|lstat|readDir)(?:Sync)?|readFileSync|readFile)\(\s*["'`][^"'`]/,
    );
    assert(literal === null, `${file} reads a literal path at run time: ${literal?.[0]}`);
    assert(!/from "node:fs/.test(code), `${file} imports node:fs: check what it reads`);
  }
  assertEquals(found.sort(), Object.keys(MODULE_RELATIVE).sort());
});

Deno.test("the --include paths hold the shipped model, reached through cli.ts's URL", async () => {
  const { SHIPPED_MODELS } = await import("../cli.ts");
  assertEquals(relative(ROOT, fileURLToPath(SHIPPED_MODELS)), "models");
  assert(COMPILE_INCLUDES.includes("models/ernie-tiny"));
  for (const include of COMPILE_INCLUDES) {
    for (
      const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    ) {
      assert((await Deno.stat(join(ROOT, include, f))).isFile, `${include}/${f} is missing`);
    }
  }
});

Deno.test("--model models/ernie-tiny finds the shipped model from any working directory", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "batchwright-compile-test-" });
  try {
    const line = {
      custom_id: "a",
      method: "POST",
      url: "/v1/chat/completions",
      body: { messages: [{ role: "user", content: "Hi" }], max_tokens: 2 },
    };
    await Deno.writeTextFile(join(tmp, "in.jsonl"), JSON.stringify(line) + "\n");
    const r = await deno([
      "run",
      "-A",
      join(ROOT, "cli.ts"),
      "run-batch",
      "--model",
      "models/ernie-tiny",
      "-i",
      "in.jsonl",
      "-o",
      "out.jsonl",
      "--validate-only",
    ], tmp);
    assertEquals(r.code, 0, r.stderr);
    assert(/validated: \d+\/1 succeeded, 0 failed/.test(r.stderr), r.stderr);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test({
  name: "deno compile builds the binary, or stops only at downloading its runtime",
  sanitizeResources: false,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "batchwright-compile-test-" });
    try {
      const binary = join(tmp, "batchwright");
      const r = await deno(compileArgs(binary));
      if (r.code !== 0) {
        // Everything before the download ran: the module graph resolved and type-checked.
        assert(/denort/.test(r.stderr), `deno compile failed before the download:\n${r.stderr}`);
        console.log(`compile_test: binary not built: ${compileError(r.stderr)}`);
        return;
      }
      const line = {
        custom_id: "a",
        method: "POST",
        url: "/v1/embeddings",
        body: { input: "hi" },
      };
      await Deno.writeTextFile(join(tmp, "in.jsonl"), JSON.stringify(line) + "\n");
      const run = await new Deno.Command(binary, {
        args: ["run-batch", "--model", "models/ernie-tiny", "-i", "in.jsonl", "-o", "out.jsonl"],
        cwd: tmp,
        stderr: "piped",
      }).output();
      assertEquals(run.code, 0, dec.decode(run.stderr));
      const answer = JSON.parse(await Deno.readTextFile(join(tmp, "out.jsonl")));
      assertEquals(answer.response.status_code, 200);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
