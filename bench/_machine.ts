/**
 * Facts about the machine a benchmark ran on, recorded beside its figures.
 *
 * @module
 */

/** What bench/results.json records about the machine. */
export interface MachineFacts {
  readonly cpu: string;
  readonly cores: number;
  /** SIMD extensions the kernels may use (from /proc/cpuinfo on Linux). */
  readonly simd: string[];
  readonly memoryGiB: number;
  readonly os: string;
  readonly deno: string;
  readonly node: string | null;
  readonly loadAverageAtStart: number[];
}

const SIMD_FLAGS = [
  "sse4_2",
  "avx",
  "avx2",
  "fma",
  "f16c",
  "avx512f",
  "avx512bw",
  "avx512_vnni",
  "avx512_bf16",
  "amx_bf16",
  "neon",
  "asimd",
];

/** Reads the CPU model, cores, SIMD flags, memory, versions and load average. */
export async function machineFacts(): Promise<MachineFacts> {
  let cpu = "unknown";
  let simd: string[] = [];
  try {
    const info = await Deno.readTextFile("/proc/cpuinfo");
    cpu = /^model name\s*:\s*(.+)$/m.exec(info)?.[1]?.trim() ?? cpu;
    const flags = new Set((/^(?:flags|Features)\s*:\s*(.+)$/m.exec(info)?.[1] ?? "").split(/\s+/));
    simd = SIMD_FLAGS.filter((f) => flags.has(f));
  } catch { /* not Linux */ }
  let node: string | null = null;
  try {
    const out = await new Deno.Command("node", { args: ["--version"], stderr: "null" }).output();
    if (out.success) node = new TextDecoder().decode(out.stdout).trim();
  } catch { /* no node */ }
  return {
    cpu,
    cores: navigator.hardwareConcurrency,
    simd,
    memoryGiB: +(Deno.systemMemoryInfo().total / 2 ** 30).toFixed(1),
    os: `${Deno.build.os}-${Deno.build.arch} ${Deno.osRelease()}`,
    deno: Deno.version.deno,
    node,
    loadAverageAtStart: Deno.loadavg(),
  };
}
