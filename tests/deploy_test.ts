/**
 * deploy/: the Kubernetes Jobs are validated against the Kubernetes API's
 * schemas (the `kubernetes-models` package, generated from the OpenAPI spec;
 * those schemas allow unknown fields, so a misspelt optional field would still
 * pass) and their shell scripts are run as the pods would run them, against an
 * object store on 127.0.0.1 with presigned-style URLs; the Slurm scripts pass
 * `bash -n` and run as array tasks would, with the environment Slurm sets, and
 * submit.sh is run against a recording `sbatch` to check the array and the
 * dependency; the Containerfile's paths are checked against the offline bundle.
 */
import { assert, assertEquals } from "./_assert.ts";
import { join, resolve } from "node:path";
import { parseAllDocuments } from "yaml";
import { Job } from "kubernetes-models/batch/v1/Job";
import type { IContainer } from "kubernetes-models/v1/Container";
import { startServer } from "./_http_servers.ts";

const ROOT = resolve(import.meta.dirname!, "..");
const DEPLOY = join(ROOT, "deploy");
const dec = new TextDecoder();

async function loadJob(file: string): Promise<Job> {
  const docs = parseAllDocuments(await Deno.readTextFile(join(DEPLOY, "kubernetes", file)));
  assertEquals(docs.length, 1, `${file}: one document`);
  const doc = docs[0]!;
  assertEquals(doc.errors.map(String), [], `${file}: YAML errors`);
  const job = new Job(doc.toJS());
  job.validate(); // throws naming the path and the schema rule
  return job;
}

const containerOf = (job: Job): IContainer => {
  const containers = job.spec!.template.spec!.containers;
  assertEquals(containers.length, 1);
  return containers[0]!;
};
const envOf = (c: IContainer) => Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value]));

async function sh(
  cmd: string,
  args: string[],
  env: Record<string, string>,
  cwd = ROOT,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(cmd, { args, env, cwd, stdout: "piped", stderr: "piped" })
    .output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A folder with `batchwright` on it: the bundle launcher's equivalent, `deno run -A cli.ts`. */
async function launcherDir(tmp: string): Promise<string> {
  const bin = join(tmp, "bin");
  await Deno.mkdir(bin);
  await Deno.writeTextFile(
    join(bin, "batchwright"),
    `#!/bin/sh\nexec "${Deno.execPath()}" run -A "${join(ROOT, "cli.ts")}" "$@"\n`,
  );
  await Deno.chmod(join(bin, "batchwright"), 0o755);
  return bin;
}

const baseEnv = () => ({
  PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
  HOME: Deno.env.get("HOME") ?? "/tmp",
  XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp",
  NO_COLOR: "1",
});

async function exampleIds(): Promise<string[]> {
  return (await Deno.readTextFile(join(ROOT, "examples/input.jsonl"))).split("\n").filter(Boolean)
    .map((l) => JSON.parse(l).custom_id);
}

Deno.test("the Kubernetes Jobs validate against the API schemas and agree with each other", async () => {
  const shards = await loadJob("shards-job.yaml");
  const merge = await loadJob("merge-job.yaml");
  const spec = shards.spec!;
  assertEquals(spec.completionMode, "Indexed");
  assert(spec.completions! >= 1 && spec.parallelism! >= 1);
  const run = containerOf(shards);
  const join_ = containerOf(merge);
  assertEquals(run.resources?.limits?.["nvidia.com/gpu"], 1, "one GPU per shard pod");
  assertEquals(join_.resources?.limits?.["nvidia.com/gpu"], undefined, "merge needs no GPU");
  // Kubernetes gives a pod its index, not the count: both Jobs must say N = completions.
  assertEquals(envOf(run).BATCHWRIGHT_NUM_SHARDS, String(spec.completions));
  assertEquals(envOf(join_).BATCHWRIGHT_NUM_SHARDS, String(spec.completions));
  assertEquals(run.image, join_.image);
  for (const job of [shards, merge]) {
    const pod = job.spec!.template.spec!;
    assertEquals(pod.restartPolicy, "Never");
    const volumes = new Set(pod.volumes?.map((v) => v.name));
    for (const m of containerOf(job).volumeMounts ?? []) {
      assert(volumes.has(m.name), `${job.metadata!.name}: mount ${m.name} has no volume`);
    }
    const secret = pod.volumes?.find((v) => v.name === "urls")?.secret?.secretName;
    assertEquals(secret, "batchwright-urls");
    assertEquals(
      containerOf(job).volumeMounts?.find((m) => m.name === "urls")?.mountPath,
      envOf(containerOf(job)).URLS,
    );
  }
});

Deno.test({
  name: "the Kubernetes Jobs' scripts run every shard and the merge against an object store",
  sanitizeResources: false,
  async fn() {
    const shards = await loadJob("shards-job.yaml");
    const merge = await loadJob("merge-job.yaml");
    const n = shards.spec!.completions!;
    const store = new Map<string, string>();
    const server = startServer((req, _ctx, body) => {
      const key = new URL(req.url).pathname;
      if (req.method === "PUT") {
        store.set(key, body);
        return new Response(null, { status: 200 });
      }
      const object = store.get(key);
      return object === undefined
        ? new Response("NoSuchKey", { status: 404 })
        : new Response(object, { status: 200 });
    });
    const tmp = await Deno.makeTempDir({ prefix: "batchwright-deploy-test-" });
    try {
      // Presigned URLs: a signature in the query, with the characters a shell would expand.
      const url = (key: string, op: string) =>
        `${server.url}/bucket/${key}?X-Amz-Signature=${op}*sig&X-Amz-Expires=600`;
      const urls = join(tmp, "urls");
      await Deno.mkdir(urls);
      await Deno.writeTextFile(join(urls, "input"), url("in.jsonl", "get"));
      for (let k = 0; k < n; k++) {
        await Deno.writeTextFile(join(urls, `shard-${k}-put`), url(`out-${k}.jsonl`, "put"));
        await Deno.writeTextFile(join(urls, `shard-${k}-get`), url(`out-${k}.jsonl`, "get"));
      }
      await Deno.writeTextFile(join(urls, "merged-put"), url("out.jsonl", "put"));
      store.set("/bucket/in.jsonl", await Deno.readTextFile(join(ROOT, "examples/input.jsonl")));
      const PATH = `${await launcherDir(tmp)}:${baseEnv().PATH}`;
      const local = { URLS: urls, SCRATCH: join(tmp, "scratch"), HF_HOME: join(tmp, "hf") };
      await Deno.mkdir(local.SCRATCH);

      const run = containerOf(shards);
      for (let k = 0; k < n; k++) {
        const env = {
          ...baseEnv(),
          ...envOf(run),
          ...local,
          MODEL: "models/ernie-tiny",
          JOB_COMPLETION_INDEX: String(k),
          PATH,
        };
        const r = await sh(run.command![0]!, [...run.command!.slice(1), ...run.args!], env);
        assertEquals(r.code, 0, `shard ${k}: ${r.stderr}`);
        assert(store.has(`/bucket/out-${k}.jsonl`), `shard ${k} uploaded nothing`);
      }
      const m = containerOf(merge);
      const r = await sh(m.command![0]!, [...m.command!.slice(1), ...m.args!], {
        ...baseEnv(),
        ...envOf(m),
        ...local,
        PATH,
      });
      assertEquals(r.code, 0, `merge: ${r.stderr}`);
      const merged = store.get("/bucket/out.jsonl")!.split("\n").filter(Boolean)
        .map((l) => JSON.parse(l));
      assertEquals(merged.map((a) => a.custom_id), await exampleIds());
      // examples/input.jsonl's line 7 is invalid on purpose.
      assertEquals(merged.map((a) => a.response?.status_code), [
        200,
        200,
        200,
        200,
        200,
        200,
        400,
        200,
      ]);
    } finally {
      await server.close();
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

Deno.test("the Slurm scripts parse with bash -n", async () => {
  for (const f of ["shard.sbatch", "merge.sbatch", "submit.sh"]) {
    const r = await sh("bash", ["-n", join(DEPLOY, "slurm", f)], baseEnv());
    assertEquals(r.code, 0, `${f}: ${r.stderr}`);
  }
});

Deno.test({
  name: "the Slurm array tasks run their shards and the merge joins them in input order",
  sanitizeResources: false,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "batchwright-slurm-test-" });
    try {
      const n = 3;
      const common = {
        ...baseEnv(),
        BATCHWRIGHT: `${Deno.execPath()} run -A ${join(ROOT, "cli.ts")}`,
        MODEL: "models/ernie-tiny",
        INPUT: "examples/input.jsonl",
        OUT_DIR: join(tmp, "run"),
        NUM_SHARDS: String(n),
      };
      for (let k = 0; k < n; k++) {
        // What Slurm sets for task k of --array=0-(n-1).
        const slurm = {
          SLURM_ARRAY_TASK_ID: String(k),
          SLURM_ARRAY_TASK_COUNT: String(n),
          SLURM_ARRAY_TASK_MIN: "0",
          SLURM_ARRAY_TASK_MAX: String(n - 1),
        };
        const r = await sh("bash", [join(DEPLOY, "slurm", "shard.sbatch")], {
          ...common,
          ...slurm,
        });
        assertEquals(r.code, 0, `task ${k}: ${r.stderr}`);
      }
      const r = await sh("bash", [join(DEPLOY, "slurm", "merge.sbatch")], common);
      assertEquals(r.code, 0, `merge: ${r.stderr}`);
      const merged = (await Deno.readTextFile(join(tmp, "run", "out.jsonl"))).split("\n")
        .filter(Boolean).map((l) => JSON.parse(l));
      assertEquals(merged.map((a) => a.custom_id), await exampleIds());
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

Deno.test("submit.sh queues the array, then the merge after it with afterok", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "batchwright-slurm-test-" });
  try {
    // A recording sbatch: Slurm is not here; this checks what submit.sh asks of it.
    const log = join(tmp, "sbatch.log");
    await Deno.writeTextFile(
      join(tmp, "sbatch"),
      `#!/bin/sh\necho "$*" >> "${log}"\nn=$(wc -l < "${log}")\necho "$((1000 + n));cluster1"\n`,
    );
    await Deno.chmod(join(tmp, "sbatch"), 0o755);
    const r = await sh("bash", [join(DEPLOY, "slurm", "submit.sh"), "--partition=gpu"], {
      ...baseEnv(),
      PATH: `${tmp}:${baseEnv().PATH}`,
      MODEL: "m",
      INPUT: "in.jsonl",
      OUT_DIR: "/shared/run",
      NUM_SHARDS: "8",
    });
    assertEquals(r.code, 0, r.stderr);
    const [array, merge] = (await Deno.readTextFile(log)).trim().split("\n");
    assert(array!.includes("--array=0-7") && array!.endsWith("/shard.sbatch"), array);
    assert(array!.includes("--partition=gpu"), array);
    assert(
      merge!.includes("--dependency=afterok:1001 ") && merge!.endsWith("/merge.sbatch"),
      merge,
    );
    assertEquals(r.stdout.trim(), "shards: job 1001 (array 0-7), merge: job 1002");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("the Containerfile copies the offline bundle's folder and runs its launcher", async () => {
  const text = await Deno.readTextFile(join(DEPLOY, "Containerfile"));
  const lines = text.split("\n").filter((l) => l.trim() && !l.startsWith("#"));
  assert(/^FROM debian:\S+/.test(lines[0]!), "FROM a Debian image first");
  const bundleArg = text.match(/^ARG BUNDLE=(\S+)$/m)?.[1];
  // tools/bundle.ts writes dist/batchwright-<os>-<x64|arm64>/ with the launcher at its top.
  const bundleTool = await Deno.readTextFile(join(ROOT, "tools/bundle.ts"));
  assert(
    bundleTool.includes("const name = `batchwright-${os}-${arch}`"),
    "bundle folder name changed",
  );
  assert(bundleTool.includes('join(dir, "batchwright")'), "bundle launcher moved");
  assertEquals(bundleArg, "dist/batchwright-linux-x64");
  const copies = [...text.matchAll(/^COPY (?:--\S+ )*(\S+) (\S+)$/gm)];
  assertEquals(copies.map((c) => c[1]), ["${BUNDLE}/"]);
  assertEquals(copies[0]![2], "/opt/batchwright/");
  assert(text.includes('ENTRYPOINT ["/opt/batchwright/batchwright"]'));
  assert(/^WORKDIR \/opt\/batchwright\/app$/m.test(text), "models/ernie-tiny resolves in app/");
  // Where a bundle was built here, its files are those the image uses.
  const built = join(ROOT, bundleArg!);
  if (await Deno.stat(built).then(() => true, () => false)) {
    for (
      const f of ["batchwright", "bin/deno", "app/cli.ts", "app/models/ernie-tiny/config.json"]
    ) {
      assert((await Deno.stat(join(built, f))).isFile, `${bundleArg}/${f} missing`);
    }
  }
});
