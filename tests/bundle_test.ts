/**
 * The offline bundle (`deno task bundle`): built, unpacked in an empty folder,
 * and run with networking disabled (`unshare -n`, where this machine allows it).
 */
import { assert, assertEquals } from "./_assert.ts";
import { join } from "node:path";
import { buildBundle, MAX_BUNDLE_BYTES } from "../tools/bundle.ts";
import { hasGpu } from "./_gpu.ts";

async function canUnshareNet(): Promise<boolean> {
  try {
    const out = await new Deno.Command("unshare", { args: ["-n", "true"], stderr: "null" })
      .output();
    return out.success;
  } catch {
    return false;
  }
}

Deno.test({
  name: "the offline bundle unpacks into an empty folder and runs a batch with no network",
  ignore: Deno.build.os !== "linux",
  sanitizeResources: false,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "batchwright-bundle-test-" });
    try {
      const built = await buildBundle({ out: join(tmp, "dist") });
      assert(built.tarball !== null);
      assert(built.bytes > 0 && built.bytes < MAX_BUNDLE_BYTES, `bundle is ${built.bytes} bytes`);
      const host = join(tmp, "host");
      await Deno.mkdir(host);
      const untar = await new Deno.Command("tar", { args: ["-xzf", built.tarball, "-C", host] })
        .output();
      assert(untar.success);
      const root = join(
        host,
        `batchwright-linux-${Deno.build.arch === "x86_64" ? "x64" : "arm64"}`,
      );
      for (const f of ["batchwright", "bin/deno", "lib/libvulkan.so.1", "app/cli.ts"]) {
        await Deno.stat(join(root, f));
      }
      const input = join(host, "in.jsonl");
      await Deno.writeTextFile(
        input,
        ['{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"temperature":0}}']
          .join("\n") + "\n",
      );
      const output = join(host, "out.jsonl");
      const launcher = [
        join(root, "batchwright"),
        "run-batch",
        "--model",
        join(root, "app/models/ernie-tiny"),
        "-i",
        input,
        "-o",
        output,
      ];
      if (!hasGpu) {
        // Without an adapter only the launcher and the cached imports can be checked.
        launcher.splice(1, launcher.length - 1, "--help");
      }
      const offline = await canUnshareNet();
      if (!offline) {
        console.error("unshare -n is not allowed here: the bundle runs with the network up");
      }
      const cmd = offline ? ["unshare", "-n", ...launcher] : launcher;
      // A clean environment: no DENO_DIR, no npm cache, nothing from this checkout.
      const run = await new Deno.Command(cmd[0]!, {
        args: cmd.slice(1),
        cwd: host,
        clearEnv: true,
        env: {
          PATH: "/usr/bin:/bin",
          HOME: host,
          ...(Deno.env.get("XDG_RUNTIME_DIR")
            ? { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR")! }
            : {}),
        },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(run.stderr);
      assertEquals(run.code, 0, stderr);
      if (hasGpu) {
        const line = JSON.parse((await Deno.readTextFile(output)).trim());
        assertEquals(line.custom_id, "a");
        assertEquals(line.response.status_code, 200);
      }
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
