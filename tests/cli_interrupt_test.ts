/**
 * Interrupting a real run: SIGINT writes batch_cancelled lines and exits
 * non-zero; SIGKILL leaves a partial file; either way `--resume` ends with
 * exactly one successful answer per custom_id.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./_assert.ts";
import { ignoreWithoutGpu } from "./_gpu.ts";
import { spawnRunBatch } from "./_cli.ts";

const N = 120;

async function writeInput(dir: string): Promise<string> {
  const input = join(dir, "in.jsonl");
  const lines = Array.from({ length: N }, (_, i) =>
    JSON.stringify({
      custom_id: `q${i}`,
      method: "POST",
      url: "/v1/chat/completions",
      body: {
        messages: [{ role: "user", content: `question ${i}` }],
        max_tokens: 24,
        ignore_eos: true,
        seed: i,
      },
    }));
  await Deno.writeTextFile(input, lines.join("\n") + "\n");
  return input;
}

/**
 * WebGPU on the test machine's CPU adapter: slow enough per step that the batch is still
 * running when the signal lands (the wasm backend can finish the tiny model's 120
 * requests inside the 3 s cancel grace, leaving nothing to cancel).
 */
function spawn(input: string, output: string, extra: string[] = []): Deno.ChildProcess {
  return spawnRunBatch(input, output, ["--max-num-seqs", "8", "--backend", "webgpu", ...extra]);
}

/** Waits, however long a loaded machine takes, until `path` has `n` lines or the child exits. */
async function waitForLines(child: Deno.ChildProcess, path: string, n: number): Promise<void> {
  let exited = false;
  child.status.finally(() => (exited = true));
  while (!exited) {
    try {
      const text = await Deno.readTextFile(path);
      if (text.split("\n").filter(Boolean).length >= n) return;
    } catch { /* not there yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the run exited before ${path} reached ${n} lines`);
}

async function answers(path: string) {
  return (await Deno.readTextFile(path)).trim().split("\n").map((l) => JSON.parse(l));
}

function assertOneSuccessEach(
  lines: { custom_id: string; response: { status_code: number } | null }[],
) {
  const ok = lines.filter((l) => l.response?.status_code === 200).map((l) => l.custom_id);
  assertEquals(ok.length, N, "one success per request");
  assertEquals(new Set(ok).size, N, "no duplicates");
}

/** Starts a batch, sends `signal` once 10 answers are written, and returns the exit code and paths. */
async function interrupt(signal: Deno.Signal) {
  const dir = await Deno.makeTempDir();
  const input = await writeInput(dir);
  const output = join(dir, "out.jsonl");
  const child = spawn(input, output);
  await waitForLines(child, `${output}.partial`, 10);
  child.kill(signal);
  const { code } = await child.status;
  return { dir, input, output, code };
}

Deno.test({
  name: "SIGINT cancels the rest with batch_cancelled lines, and --resume completes the batch",
  ignore: ignoreWithoutGpu,
}, async () => {
  const { dir, input, output, code } = await interrupt("SIGINT");
  assertEquals(code, 130);
  const first = await answers(output).catch(async () => await answers(`${output}.partial`));
  assertEquals(first.length, N, "every request has a line");
  const cancelled = first.filter((l) => l.error?.code === "batch_cancelled");
  assert(cancelled.length > 0, "some requests were cancelled");
  assert(cancelled.every((l) => l.response === null));
  const resumed = await spawn(input, output, ["--resume"]).status;
  assertEquals(resumed.code, 0);
  assertOneSuccessEach(await answers(output));
  await Deno.remove(dir, { recursive: true });
});

Deno.test({
  name: "after SIGKILL mid-batch, --resume ends with exactly one answer per custom_id",
  ignore: ignoreWithoutGpu,
}, async () => {
  const { dir, input, output } = await interrupt("SIGKILL");
  const resumed = await spawn(input, output, ["--resume"]).status;
  assertEquals(resumed.code, 0);
  const lines = await answers(output);
  assertOneSuccessEach(lines);
  assertEquals(lines.length, N);
  await Deno.remove(dir, { recursive: true });
});
