/**
 * Runs `cli.ts` in a child process, as a user would, for the CLI tests.
 *
 * @module
 */

/** The child's environment: Mesa's runtime dir, no colours. */
function childEnv(): Record<string, string> {
  return { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", NO_COLOR: "1" };
}

/** Runs `deno run -A cli.ts ARGS` to the end and returns its exit code and output. */
export async function runCli(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "cli.ts", ...args],
    env: { ...childEnv(), ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Starts `run-batch` on the shipped tiny model, quietly, and returns the running child. */
export function spawnRunBatch(
  input: string,
  output: string,
  extra: readonly string[] = [],
  options: { stderr?: "piped" | "null"; env?: Record<string, string> } = {},
): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
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
      output,
      "-q",
      ...extra,
    ],
    env: { ...childEnv(), ...options.env },
    stdout: "null",
    stderr: options.stderr ?? "null",
  }).spawn();
}
