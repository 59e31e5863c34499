/**
 * The one table `deno task bench` prints: kernels beside numpy, end to end
 * beside node-llama-cpp, batched beside one at a time, memory.
 *
 * @module
 */
import type { KernelRow } from "./_kernels.ts";
import type { OursFigures, RunFigures } from "./_e2e.ts";
import type { MemoryFigures } from "./_memory.ts";
import type { Workload } from "./_workload.ts";
import type { BandwidthFigures } from "./_bandwidth.ts";
import type { NativeFigures } from "./_native.ts";
import type { OverlapFigures } from "./_overlap.ts";

/** The parts of bench/results.json the table shows. */
export interface TableInput {
  readonly workload: Workload;
  readonly kernels: readonly KernelRow[];
  readonly bandwidth: BandwidthFigures | null;
  readonly e2e: {
    readonly ours: OursFigures | null;
    readonly nodeLlamaCpp:
      | {
        readonly nodeLlamaCpp: string;
        readonly llamaCpp: { readonly release: string };
        readonly threads?: number;
        readonly headline?: RunFigures;
        readonly batching?: RunFigures;
        readonly oneAtATime?: RunFigures;
        readonly batchingOverOneAtATime: number;
      }
      | { readonly error: string }
      | null;
    readonly oursOverNodeLlamaCpp: number | null;
    readonly agreement: Record<string, unknown> | null;
    readonly nativeLlamaCpp: NativeFigures | { readonly error: string } | null;
    readonly oursOverNativeLlamaCpp: number | null;
  };
  readonly overlap: OverlapFigures | null;
  readonly memory: readonly MemoryFigures[] | null;
}

/** Left-aligns the first `left` columns and right-aligns the rest. */
function render(rows: (string | number | null)[][], left = 1): string[] {
  const cells = rows.map((r) => r.map((c) => (c === null ? "–" : String(c))));
  const widths = cells[0]!.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  return cells.map((r) =>
    r.map((c, i) => (i < left ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ")
  );
}

/** Prints the table. */
export function printTable(r: TableInput): void {
  const out: string[] = [""];
  if (r.kernels.length > 0) {
    out.push(...render([
      ["kernel", "shape", "M", "N", "K", "GFLOP/s", "numpy f32", "ratio"],
      ...r.kernels.map((k) => [
        k.kernel,
        k.name,
        k.M,
        k.N,
        k.K,
        k.gflops.toFixed(2),
        k.numpyGflops,
        k.ratioToNumpy,
      ]),
    ], 2));
    out.push("");
  }
  const b = r.bandwidth;
  if (b) {
    out.push(...render([
      [
        `GEMV at M = 1: one sequence decoding (${b.backend}), weights from memory`,
        "GB/s",
        `÷ numpy f32 GEMV (${b.numpyGemvGBs ?? "–"} GB/s)`,
      ],
      ...b.ops.map((o) => [`  ${o.op}`, o.gbPerSecond.toFixed(1), o.ratioToMemory]),
      [
        `  all matmuls (${(100 * b.matmulShare).toFixed(0)}% of the step)`,
        b.matmulGBs.toFixed(1),
        b.matmulRatioToMemory,
      ],
    ]));
    out.push("");
  }
  const w = r.workload;
  const ours = r.e2e.ours;
  const peer = r.e2e.nodeLlamaCpp;
  const peerOk = peer !== null && !("error" in peer) ? peer : null;
  const peerName = peerOk
    ? `node-llama-cpp ${peerOk.nodeLlamaCpp} (prebuilt llama.cpp, ${peerOk.threads} thread${
      peerOk.threads === 1 ? "" : "s"
    })`
    : "node-llama-cpp";
  const oursName = ours ? `batchwright (${ours.backend})` : "batchwright";
  const native = r.e2e.nativeLlamaCpp;
  const nativeOk = native !== null && !("error" in native) ? native : null;
  const nativeRow = (n: number) => nativeOk?.rows.find((x) => x.sequences === n);
  const tps = (f?: RunFigures | null) => (f ? f.tokensPerSecond.toFixed(1) : null);
  out.push(...render([
    [
      `end to end: ${w.sequences} sequences × (${w.promptTokens} prompt + ${w.generatedTokens} generated tokens), greedy`,
      "generated tok/s",
      "seconds",
    ],
    [`  ${oursName}`, tps(ours?.headline), ours?.headline.seconds ?? null],
    [
      `  ${peerName}`,
      tps(peerOk?.headline) ?? (peer && "error" in peer ? "error" : null),
      peerOk?.headline?.seconds ?? null,
    ],
    [
      "  batchwright / node-llama-cpp",
      r.e2e.oursOverNodeLlamaCpp === null ? null : `${r.e2e.oursOverNodeLlamaCpp}×`,
      "",
    ],
    ...(nativeRow(w.sequences)
      ? [
        [
          `  native llama.cpp ${nativeOk!.commit ?? ""} (built here, -march=native, ${
            nativeOk!.threads
          } threads)`,
          nativeRow(w.sequences)!.tokensPerSecond.toFixed(1),
          nativeRow(w.sequences)!.seconds,
        ],
        [
          "  batchwright / native llama.cpp (the issue asks ≥ 0.25)",
          r.e2e.oursOverNativeLlamaCpp === null ? null : `${r.e2e.oursOverNativeLlamaCpp}×`,
          "",
        ],
      ]
      : []),
  ]));
  out.push("");
  out.push(...render([
    [
      `batching: ${w.batchingSequences} sequences at once vs one at a time (tok/s)`,
      "at once",
      "one at a time",
      "ratio",
    ],
    [
      "  batchwright",
      tps(ours?.batching),
      tps(ours?.oneAtATime),
      ours ? `${ours.batchingOverOneAtATime}×` : null,
    ],
    [
      "  node-llama-cpp",
      tps(peerOk?.batching),
      tps(peerOk?.oneAtATime),
      peerOk ? `${peerOk.batchingOverOneAtATime}×` : null,
    ],
    ...(nativeRow(w.batchingSequences) && nativeRow(1)
      ? [[
        "  native llama.cpp",
        nativeRow(w.batchingSequences)!.tokensPerSecond.toFixed(1),
        nativeRow(1)!.tokensPerSecond.toFixed(1),
        `${
          (nativeRow(w.batchingSequences)!.tokensPerSecond / nativeRow(1)!.tokensPerSecond)
            .toFixed(2)
        }×`,
      ]]
      : []),
  ]));
  const a = r.e2e.agreement;
  if (a) {
    out.push(
      "",
      `greedy agreement with node-llama-cpp on ernie-tiny: ${a.identicalSequences}/${a.sequences} ` +
        `sequences identical, ${a.tokensBeforeFirstDifference}/${a.tokens} tokens before the first difference`,
    );
  }
  if (peer && "error" in peer) out.push("", `node-llama-cpp: ${peer.error}`);
  if (native && "error" in native) out.push("", `native llama.cpp: ${native.error}`);
  const o = r.overlap;
  if (o && !("skipped" in o)) {
    out.push("");
    out.push(...render([
      [
        `steps overlap, WebGPU (${o.kernelClass} kernels), ${o.model}`,
        "async tok/s",
        "one step at a time",
        "ratio",
      ],
      ...o.rows.map((x) => [
        `  ${x.sequences} sequences (${x.async.overlappedSteps}/${x.async.steps} steps overlapped)`,
        x.async.tokensPerSecond.toFixed(1),
        x.oneStepAtATime.tokensPerSecond.toFixed(1),
        `${x.asyncOverOneStepAtATime.toFixed(2)}×`,
      ]),
    ]));
  }
  if (r.memory) {
    out.push("");
    out.push(...render([
      ["memory: CLI batch, max_tokens 1, tiny model", "peak RSS MiB", "seconds"],
      ...r.memory.map((m) => [`  ${m.lines} lines`, m.peakRssMiB, m.seconds]),
    ]));
  }
  console.log(out.join("\n"));
}
