/**
 * `deno task compile`: `run-batch` (and `merge`) as one executable,
 * `dist/batchwright`, with `deno compile`. Embedded: every module cli.ts
 * imports, the WGSL shaders (text imports), the wasm kernels (a TypeScript
 * module; the worker's source is a string in engine/backends/wasm/threads.ts,
 * started from a blob URL, so no worker file), the npm dependencies, and the
 * shipped model `models/ernie-tiny` (`--include`), which cli.ts reaches through
 * its own URL (`SHIPPED_MODELS`), so `--model models/ernie-tiny` works from any
 * folder:
 *
 * ```sh
 * ./dist/batchwright run-batch --model models/ernie-tiny -i in.jsonl -o out.jsonl
 * ```
 *
 * `deno compile` takes its runtime (denort, for the target) from Deno's download
 * host, or from `DENORT_BIN` when set: on a machine that cannot reach the host,
 * download `denort-<target>.zip` of this Deno version elsewhere, unzip it, and
 * set `DENORT_BIN=/path/to/denort`.
 *
 * Flags: `--output PATH` (default `dist/batchwright`), `--target TRIPLE`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** The entry point compiled. */
export const COMPILE_ENTRY = "cli.ts";
/** Files the binary reads at run time that no import reaches: embedded with `--include`. */
export const COMPILE_INCLUDES = ["models/ernie-tiny"] as const;

/** `deno compile`'s arguments (run in the repository root). */
export function compileArgs(output: string, target?: string): string[] {
  return [
    "compile",
    "-A",
    ...(target ? ["--target", target] : []),
    ...COMPILE_INCLUDES.flatMap((p) => ["--include", p]),
    "-o",
    output,
    COMPILE_ENTRY,
  ];
}

/** Why a `deno compile` failed, in words a user can act on. */
export function compileError(stderr: string): string {
  const last = stderr.trim().split("\n").filter((l) =>
    !/^\s*\d+: <unknown>|Stack backtrace/.test(l)
  );
  if (/denort/.test(stderr)) {
    return "deno compile could not get its runtime (denort) from Deno's download host: " +
      `download denort for Deno ${Deno.version.deno} and this target elsewhere, unzip it, and set ` +
      `DENORT_BIN=/path/to/denort (${last.find((l) => /error sending|Download/.test(l))?.trim()})`;
  }
  return `deno compile failed: ${last.slice(-6).join("\n")}`;
}

/** Compiles the binary; returns its path. */
export async function compile(o: { output?: string; target?: string } = {}): Promise<string> {
  const output = o.output ?? join(ROOT, "dist", "batchwright");
  await Deno.mkdir(dirname(output), { recursive: true });
  const out = await new Deno.Command(Deno.execPath(), {
    args: compileArgs(output, o.target),
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(compileError(new TextDecoder().decode(out.stderr)));
  return output;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { output: { type: "string", short: "o" }, target: { type: "string" } },
  });
  try {
    console.error(`wrote ${await compile({ output: values.output, target: values.target })}`);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exitCode = 1;
  }
}
