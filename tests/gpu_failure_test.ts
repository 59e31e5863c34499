/**
 * The GPU failure cases (tests/_gpu_failure_cases.ts: lost devices, errors no scope
 * caught, allocation on a lost device, a batch that loses its device and resumes) in a
 * child `deno test` of their own. After a device was destroyed on purpose, Mesa's
 * software driver sometimes aborts in its own teardown when the process exits (about
 * one run in three of that file; an open defect of issue 10): the child shows it
 * without taking the rest of the suite down with it, and any failed case still fails.
 */
import { join } from "node:path";
import { assert } from "./_assert.ts";
import { ignoreWithoutGpu } from "./_gpu.ts";

Deno.test({
  name: "GPU failure cases (in a child process): every case passes",
  ignore: ignoreWithoutGpu,
}, async () => {
  const cases = join(import.meta.dirname!, "_gpu_failure_cases.ts");
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", cases],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  const summary = /^(ok|FAILED) \| (\d+) passed.*?\| (\d+) failed/m.exec(text);
  const tail = text.slice(-3000);
  assert(summary !== null, `no test summary from the child (exit ${out.code}):\n${tail}`);
  assert(summary[1] === "ok" && summary[3] === "0", `a GPU failure case failed:\n${tail}`);
  assert(Number(summary[2]) >= 6, `only ${summary[2]} cases ran:\n${tail}`);
  if (out.code !== 0) {
    // Every case passed and reported; only the driver's teardown at exit went wrong.
    assert(out.signal === "SIGABRT" || out.signal === "SIGSEGV" || out.code >= 128, tail);
    console.error(
      `the failure cases passed, then their process died at exit (${out.signal ?? out.code})`,
    );
  }
});
