/**
 * The peer: node-llama-cpp (its npm package, with the prebuilt llama.cpp CPU
 * binary) in a `node` child process, on a GGUF of the same model that the
 * bench writes. It is installed with npm into bench/tmp/peer/ (git-ignored,
 * its own package.json), so nothing of it enters the product's imports.
 *
 * @module
 */
import { join } from "node:path";
import { writeErnieGguf } from "../tools/ernie_gguf.ts";
import type { RunFigures } from "./_e2e.ts";

/** The peer's pinned version. */
export const NODE_LLAMA_CPP_VERSION = "3.21.1";

const PEER_DIR = join("bench", "tmp", "peer");

/** node-llama-cpp's prebuilt-binary package for this platform (its optionalDependencies). */
function binaryPackage(): string {
  const { os, arch } = Deno.build;
  const name: Record<string, string> = {
    "linux-x86_64": "linux-x64",
    "linux-aarch64": "linux-arm64",
    "darwin-aarch64": "mac-arm64-metal",
    "darwin-x86_64": "mac-x64",
    "windows-x86_64": "win-x64",
    "windows-aarch64": "win-arm64",
  };
  const suffix = name[`${os}-${arch}`];
  if (suffix === undefined) {
    throw new Error(`node-llama-cpp ships no prebuilt binary for ${os}-${arch}`);
  }
  return `@node-llama-cpp/${suffix}`;
}

async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output()
    .catch((e: Error) => {
      throw new Error(`cannot run ${cmd} (${e.message}); install Node.js 20+ with npm`);
    });
  const text = new TextDecoder();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${text.decode(out.stderr).slice(-2000)}`);
  }
  return text.decode(out.stdout);
}

/**
 * Installs node-llama-cpp into bench/tmp/peer/ unless that version is already
 * there: only the package and this platform's CPU binary (the optional CUDA
 * and Vulkan builds are left out), no install scripts (the binary is prebuilt).
 */
export async function installPeer(): Promise<void> {
  const installed = await Deno.readTextFile(
    join(PEER_DIR, "node_modules", "node-llama-cpp", "package.json"),
  ).then((t) => JSON.parse(t).version as string, () => null);
  await Deno.mkdir(PEER_DIR, { recursive: true });
  await Deno.copyFile(join("bench", "node_llama_cpp.mjs"), join(PEER_DIR, "node_llama_cpp.mjs"));
  if (installed === NODE_LLAMA_CPP_VERSION) return;
  const pkg = {
    name: "batchwright-bench-peer",
    private: true,
    type: "module",
    dependencies: {
      "node-llama-cpp": NODE_LLAMA_CPP_VERSION,
      [binaryPackage()]: NODE_LLAMA_CPP_VERSION,
    },
  };
  await Deno.writeTextFile(join(PEER_DIR, "package.json"), JSON.stringify(pkg, null, 2) + "\n");
  console.log(`installing node-llama-cpp ${NODE_LLAMA_CPP_VERSION} into ${PEER_DIR} …`);
  await run("npm", [
    "install",
    "--omit=optional",
    "--ignore-scripts",
    "--no-audit",
    "--no-fund",
    "--loglevel=error",
  ], PEER_DIR);
}

/** Writes `dir`'s GGUF to `out` unless one newer than its weights is there. */
export async function ensureGguf(dir: string, out: string, vocabRows?: number): Promise<void> {
  const weights = await Deno.stat(join(dir, "model.safetensors"));
  const gguf = await Deno.stat(out).catch(() => null);
  if (gguf?.mtime && weights.mtime && gguf.mtime > weights.mtime) return;
  console.log(`writing ${out} (GGUF of ${dir}) …`);
  await writeErnieGguf(dir, out, { vocabRows });
}

/** What the peer's script reports (see bench/node_llama_cpp.mjs). */
export interface PeerReport {
  readonly nodeLlamaCpp: string;
  readonly llamaCppRelease: { repo: string; release: string };
  readonly buildType: string;
  readonly cpuMathCores: number;
  readonly model: Record<string, unknown>;
  readonly runs: (RunFigures & { name: string; threads: number; outputs: number[][] })[];
}

/** One run of the peer's job. */
export interface PeerRun {
  readonly name: string;
  readonly prompts: number[][];
  readonly maxTokens: number;
  /** Each prompt alone in a context of its own, one after another. */
  readonly oneAtATime?: boolean;
}

/** Runs node-llama-cpp on `gguf` in a child process. */
export async function runPeer(
  gguf: string,
  runs: PeerRun[],
  options: { warmup?: number[]; threads?: number } = {},
): Promise<PeerReport> {
  const job = join(PEER_DIR, "job.json");
  const model = Deno.realPathSync(gguf);
  await Deno.writeTextFile(job, JSON.stringify({ model, runs, ...options }));
  const out = await run("node", ["node_llama_cpp.mjs", "job.json"], PEER_DIR);
  return JSON.parse(out.trim().split("\n").pop()!) as PeerReport;
}
