/**
 * Checks a batch's paths before anything heavy happens (loading a model takes
 * seconds to minutes): the input can be read, the output would not replace an
 * existing file, its folder exists (created as `mkdir -p` would) and can be
 * written. Each failure is one {@linkcode InputError} or {@linkcode OutputError}
 * naming the path and what to do; nothing is left behind.
 *
 * @module
 */
import { dirname, resolve } from "node:path";
import { checkInput } from "./reader.ts";
import { checkOutput } from "./writer.ts";

/** The paths {@linkcode preflightBatch} checks (a subset of `RunBatchOptions`). */
export interface PreflightOptions {
  /** A local path (checked), an http(s) URL or `-` (not checked: read later). */
  readonly input: string;
  /** A local path (checked, its folder created), an http(s) URL or `-`. */
  readonly output: string;
  /** Checked like the output. */
  readonly errorFile?: string;
  /** Its folder is created. */
  readonly summaryFile?: string;
  /** Created and checked for writing when given. */
  readonly outputTmpDir?: string;
  /** An existing output is fine: it will be replaced. */
  readonly overwrite?: boolean;
  /** An existing output is fine: it will be continued. */
  readonly resume?: boolean;
  /** Nothing is written: only the input is checked. */
  readonly validateOnly?: boolean;
}

const isLocal = (s: string) => s !== "-" && !/^https?:\/\//i.test(s);

/**
 * Checks every path of a batch without writing anything but missing folders.
 *
 * @example
 * ```ts ignore
 * await preflightBatch({ input: "requests.jsonl", output: "out/results.jsonl" });
 * // throws InputError / OutputError naming the path, or creates out/ and returns
 * ```
 */
export async function preflightBatch(options: PreflightOptions): Promise<void> {
  await checkInput(options.input);
  if (options.validateOnly) return;
  await checkOutput(options.output, options);
  if (options.errorFile !== undefined) {
    // The error file follows the output: replaced by --overwrite, continued by --resume.
    await checkOutput(options.errorFile, options);
  }
  if (options.summaryFile !== undefined && isLocal(options.summaryFile)) {
    await Deno.mkdir(dirname(resolve(options.summaryFile)), { recursive: true });
  }
}
