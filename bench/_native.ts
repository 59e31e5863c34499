/**
 * Native llama.cpp, built from source on this machine, as issue 9's upper
 * yardstick ("a quarter of native llama.cpp's generated tokens/s"): the
 * llama.cpp source that node-llama-cpp 3.21.1 ships (`llama/gitRelease.bundle`,
 * the same release as its prebuilt binary) built with `-DGGML_NATIVE=ON`
 * (every SIMD extension of this CPU) into bench/tmp/llama.cpp/, and its
 * `llama-batched-bench` run on the same GGUF with the bench's workload.
 *
 * Building takes minutes and needs cmake and a C++ compiler, so the bench
 * builds it only when asked (`--native`) and otherwise uses a build that is
 * already there, or says how to make one.
 *
 * @module
 */
import { join } from "node:path";
import type { Workload } from "./_workload.ts";

const SOURCE_DIR = join("bench", "tmp", "llama.cpp");
const BUNDLE = join(
  "bench",
  "tmp",
  "peer",
  "node_modules",
  "node-llama-cpp",
  "llama",
  "gitRelease.bundle",
);
/** The binary the bench runs. */
export const NATIVE_BINARY = join(SOURCE_DIR, "build", "bin", "llama-batched-bench");

/** One row of llama-batched-bench. */
export interface NativeRow {
  /** Sequences decoding at once. */
  readonly sequences: number;
  /** Generated tokens over the whole run's seconds (prompt processing included), as ours. */
  readonly tokensPerSecond: number;
  /** Generated tokens over the decode seconds alone (llama.cpp's S_TG). */
  readonly decodeTokensPerSecond: number;
  readonly seconds: number;
}

/** What the native section records. */
export interface NativeFigures {
  readonly binary: string;
  readonly commit: string | null;
  readonly threads: number;
  readonly rows: readonly NativeRow[];
}

async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${text.decode(out.stderr).slice(-2000)}`);
  }
  return text.decode(out.stdout);
}

/** Whether a native build is already there. */
export async function haveNative(): Promise<boolean> {
  return await Deno.stat(NATIVE_BINARY).then((s) => s.isFile, () => false);
}

/**
 * Builds llama-batched-bench from node-llama-cpp's bundled llama.cpp source
 * (installPeer must have run): Release, GGML_NATIVE, CPU only, no curl.
 */
export async function buildNative(): Promise<void> {
  if (!(await Deno.stat(join(SOURCE_DIR, "CMakeLists.txt")).then(() => true, () => false))) {
    await Deno.remove(SOURCE_DIR, { recursive: true }).catch(() => {});
    await run("git", ["clone", "--quiet", BUNDLE, SOURCE_DIR]);
  }
  console.log(`building native llama.cpp in ${SOURCE_DIR} (cmake, minutes) …`);
  await run("cmake", [
    "-B",
    "build",
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
  ], SOURCE_DIR);
  await run("cmake", [
    "--build",
    "build",
    "--target",
    "llama-batched-bench",
    "-j",
    String(navigator.hardwareConcurrency),
  ], SOURCE_DIR);
}

/**
 * Runs llama-batched-bench on `gguf`: the workload's prompt and generated
 * lengths at 1, the batching count and the headline count of sequences, each
 * sequence with its own prompt (not shared), as our engine runs them.
 */
export async function runNative(
  gguf: string,
  w: Workload,
  threads = navigator.hardwareConcurrency,
): Promise<NativeFigures> {
  const counts = [...new Set([1, w.batchingSequences, w.sequences])];
  const ctx = w.sequences * (w.promptTokens + w.generatedTokens) + 256;
  const out = await run(NATIVE_BINARY, [
    "-m",
    gguf,
    "-c",
    String(ctx),
    "-b",
    "512",
    "-ub",
    "512",
    "-npp",
    String(w.promptTokens),
    "-ntg",
    String(w.generatedTokens),
    "-npl",
    counts.join(","),
    "-t",
    String(threads),
    "--output-format",
    "jsonl",
  ]);
  const rows = out.split("\n").filter((l) => l.startsWith("{")).map((l) => {
    const r = JSON.parse(l) as { pl: number; tg: number; t: number; speed_tg: number };
    return {
      sequences: r.pl,
      tokensPerSecond: +((r.pl * r.tg) / r.t).toFixed(2),
      decodeTokensPerSecond: +r.speed_tg.toFixed(2),
      seconds: +r.t.toFixed(2),
    };
  });
  const commit = await run("git", ["rev-parse", "--short", "HEAD"], SOURCE_DIR)
    .then((s) => s.trim(), () => null);
  return { binary: NATIVE_BINARY, commit, threads, rows };
}
