/**
 * `deno task build:node`: the Node.js 20+ package, built from the same sources
 * into `dist/node/` (git-ignored):
 *
 * ```
 * package.json   exports "." (the library) and "./cli", bin "batchwright",
 *                dependencies webgpu (Dawn, for navigator.gpu) and @deno/shim-deno
 * mod.mjs        node/mod.ts bundled: node/setup.ts, then everything mod.ts exports
 * cli.mjs        node/cli.ts bundled: node/setup.ts, then cli.ts's main()
 * models/        the shipped model (ernie-tiny), beside cli.mjs as it is beside
 *                cli.ts, so `--model models/ernie-tiny` works from any folder
 * ```
 *
 * Each file is one `deno bundle` of its entry: the project's modules, the WGSL
 * shaders (text imports, inlined as strings) and the npm packages of deno.json
 * are inside; only the two Node-only packages stay external, installed by
 * `npm install` beside the bundles.
 *
 * Flags: `--out DIR` (default `dist/node`).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import denoJson from "../deno.json" with { type: "json" };

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Models shipped in the package: cli.ts finds `models/NAME` beside itself (SHIPPED_MODELS). */
const SHIPPED = ["models/ernie-tiny"];

/** Packages the Node entry loads at run time from node_modules (not bundled). */
export const NODE_DEPENDENCIES = ["webgpu", "@deno/shim-deno"] as const;

/** `npm:name@version` of deno.json's import map → `version`. */
function npmVersion(name: string): string {
  const spec = (denoJson.imports as Record<string, string>)[name];
  const version = spec?.match(/^npm:(?:@[^/]+\/)?[^@]+@(.+)$/)?.[1];
  if (version === undefined) {
    throw new Error(`deno.json: imports["${name}"] must be "npm:${name}@VERSION", got "${spec}"`);
  }
  return version;
}

/** The package.json of the Node package. */
export function nodePackageJson(): Record<string, unknown> {
  return {
    name: "batchwright",
    version: denoJson.version,
    description: "Batch inference for ERNIE-4.5 on WebGPU (Node.js build, with Dawn)",
    license: denoJson.license,
    type: "module",
    engines: { node: ">=20" },
    exports: { ".": "./mod.mjs", "./cli": "./cli.mjs", "./package.json": "./package.json" },
    bin: { batchwright: "./cli.mjs" },
    dependencies: Object.fromEntries(NODE_DEPENDENCIES.map((n) => [n, npmVersion(n)])),
  };
}

async function bundle(entry: string, output: string): Promise<void> {
  const args = [
    "bundle",
    "--quiet",
    "--config",
    join(ROOT, "deno.json"),
    "--platform",
    "deno",
    "--format",
    "esm",
    // `--external=NAME`: the spaced form takes every following word, the entry included.
    ...NODE_DEPENDENCIES.map((n) => `--external=${n}`),
    "-o",
    output,
    join(ROOT, entry),
  ];
  const out = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
    .output();
  const err = new TextDecoder().decode(out.stderr);
  // deno bundle exits 0 having written nothing when it could not start: check the file.
  const written = await Deno.stat(output).then((s) => s.size > 0, () => false);
  if (!out.success || !written) {
    throw new Error(`deno bundle ${entry} failed: ${err.trim().split("\n").slice(-5).join("\n")}`);
  }
}

/** Builds the package into `out` (replacing its files; an installed node_modules stays). */
export async function buildNode(o: { out?: string } = {}): Promise<string> {
  const out = o.out ?? join(ROOT, "dist", "node");
  await Deno.mkdir(out, { recursive: true });
  await bundle("node/mod.ts", join(out, "mod.mjs"));
  await bundle("node/cli.ts", join(out, "cli.mjs"));
  await Deno.chmod(join(out, "cli.mjs"), 0o755);
  for (const model of SHIPPED) {
    await Deno.remove(join(out, model), { recursive: true }).catch(() => {});
    await Deno.mkdir(join(out, model), { recursive: true });
    for (const e of Deno.readDirSync(join(ROOT, model))) {
      if (e.isFile) await Deno.copyFile(join(ROOT, model, e.name), join(out, model, e.name));
    }
  }
  await Deno.writeTextFile(
    join(out, "package.json"),
    JSON.stringify(nodePackageJson(), null, 2) + "\n",
  );
  return out;
}

if (import.meta.main) {
  const { values } = parseArgs({ args: Deno.args, options: { out: { type: "string" } } });
  try {
    const out = await buildNode({ out: values.out });
    console.error(`wrote ${out} (then: cd ${out} && npm install)`);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exitCode = 1;
  }
}
