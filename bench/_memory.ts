/**
 * Host memory of big batches: peak RSS (VmHWM) of a CLI run over many
 * requests with max_tokens 1 on the tiny model.
 *
 * @module
 */
import { join } from "node:path";

/** Peak RSS of one CLI run. */
export interface MemoryFigures {
  readonly lines: number;
  readonly peakRssMiB: number;
  readonly seconds: number;
}

/** Peak RSS (VmHWM) of a CLI run over `lines` requests with max_tokens 1. */
export async function batchPeakRss(lines: number): Promise<MemoryFigures> {
  const tmp = await Deno.makeTempDir({ prefix: "batchwright-bench-" });
  const input = join(tmp, "in.jsonl");
  const file = await Deno.open(input, { write: true, create: true });
  const enc = new TextEncoder();
  let chunk = "";
  for (let i = 0; i < lines; i++) {
    chunk += JSON.stringify({
      custom_id: `r${i}`,
      method: "POST",
      url: "/v1/chat/completions",
      body: { messages: [{ role: "user", content: `Say ${i}` }], max_tokens: 1, temperature: 0 },
    }) + "\n";
    if (chunk.length > 1 << 20) {
      await file.write(enc.encode(chunk));
      chunk = "";
    }
  }
  await file.write(enc.encode(chunk));
  file.close();
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "cli.ts",
      "run-batch",
      "--model",
      "models/ernie-tiny",
      "-i",
      input,
      "-o",
      join(tmp, "out.jsonl"),
      "-q",
    ],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  let peak = 0;
  const poll = setInterval(() => {
    try {
      const status = Deno.readTextFileSync(`/proc/${child.pid}/status`);
      const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
      peak = Math.max(peak, kb);
    } catch { /* exited */ }
  }, 200);
  await child.status;
  clearInterval(poll);
  await Deno.remove(tmp, { recursive: true });
  return {
    lines,
    peakRssMiB: +(peak / 1024).toFixed(1),
    seconds: +((performance.now() - t0) / 1000).toFixed(1),
  };
}
