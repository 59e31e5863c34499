/**
 * `deno task bundle`: writes an offline bundle for air-gapped Linux GPU hosts,
 * `dist/batchwright-<os>-<arch>/` and its `.tar.gz`:
 *
 * ```
 * batchwright          launcher: `./batchwright run-batch ...`, `./batchwright bench ...`
 * bin/deno             Deno 2.9.6 from the npm-distributed package (@deno/<platform>)
 * lib/libvulkan.so.1   the Vulkan loader from Debian's libvulkan1
 * app/                 the project (no tests)
 * deno_dir/            DENO_DIR with every npm dependency cached, so nothing is fetched
 * ```
 *
 * Flags: `--out DIR` (default `dist`), `--no-tar` (folder only).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const DENO_VERSION = "2.9.6";
/** The compressed bundle must stay under this (an air-gapped copy, a device upload). */
export const MAX_BUNDLE_BYTES = 64 * 2 ** 20;

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Paths of the repository that the bundle leaves out. */
const EXCLUDE = [
  /^tests\//,
  /^\.ci\//,
  /^\.git/,
  /^dist\//,
  /^bench\/tmp\//,
  /^examples\/output/,
  /^node\//, // the Node.js entry point has its own package (deno task build:node)
  /^deploy\//,
  /^deno\.lock$/,
];

const LAUNCHER = `#!/bin/sh
# batchwright offline bundle: runs the bundled Deno on the bundled project, with every
# dependency cached in deno_dir/ and the Vulkan loader from lib/. Nothing is fetched.
here=$(cd "$(dirname "$0")" && pwd)
export DENO_DIR="$here/deno_dir" DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1
export LD_LIBRARY_PATH="$here/lib\${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ -n "\${XDG_RUNTIME_DIR:-}" ] || export XDG_RUNTIME_DIR="$(mktemp -d)"
# NVIDIA's container runtime mounts the driver's Vulkan ICD outside the loader's search path.
if [ -z "\${VK_DRIVER_FILES:-}\${VK_ICD_FILENAMES:-}" ] &&
  ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1; then
  for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/icd.d/nvidia_icd.json; do
    if [ -f "$f" ]; then export VK_DRIVER_FILES="$f"; break; fi
  done
fi
deno() { "$here/bin/deno" run -A --cached-only --config "$here/app/deno.json" "$@"; }
case "\${1:-}" in
  bench) shift; cd "$here/app" && deno "$here/app/bench/bench.ts" "$@" ;;
  *) deno "$here/app/cli.ts" "$@" ;;
esac
`;

async function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: Record<string, string> } = {},
) {
  const out = await new Deno.Command(cmd, { args, ...opts, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join("\n");
    throw new Error(`${cmd} ${args.join(" ")} failed: ${err}`);
  }
  return new TextDecoder().decode(out.stdout);
}

function platform(): { os: string; arch: string; denoPackage: string } {
  const { os, arch } = Deno.build;
  if (os !== "linux") throw new Error(`The offline bundle is built for Linux hosts, not ${os}`);
  const a = arch === "x86_64" ? "x64" : "arm64";
  return { os, arch: a, denoPackage: `@deno/linux-${a}-glibc` };
}

/** The Deno binary from the npm package (npm pack), or this process's when it is that version. */
async function denoBinary(pkg: string, tmp: string): Promise<string> {
  try {
    await run("npm", ["pack", `${pkg}@${DENO_VERSION}`, "--pack-destination", tmp, "--silent"]);
    const tgz = [...Deno.readDirSync(tmp)].find((e) => e.name.endsWith(".tgz"));
    if (!tgz) throw new Error("npm pack wrote no tarball");
    await run("tar", ["-xzf", join(tmp, tgz.name), "-C", tmp]);
    return join(tmp, "package", "deno");
  } catch (e) {
    if (Deno.version.deno === DENO_VERSION) return Deno.execPath();
    throw new Error(`Cannot get Deno ${DENO_VERSION} from npm (${(e as Error).message})`);
  }
}

/** libvulkan.so.1 from Debian's libvulkan1 package (apt-get download), or the installed copy. */
async function vulkanLoader(tmp: string): Promise<string> {
  try {
    await run("apt-get", ["download", "libvulkan1"], { cwd: tmp });
    const deb = [...Deno.readDirSync(tmp)].find((e) => e.name.startsWith("libvulkan1_"));
    if (!deb) throw new Error("no .deb");
    const x = join(tmp, "libvulkan1");
    await run("dpkg-deb", ["-x", join(tmp, deb.name), x]);
    const found = (await run("find", [x, "-name", "libvulkan.so.1*", "-type", "f"])).trim();
    if (found) return found.split("\n")[0]!;
  } catch { /* fall back to the installed library */ }
  for (const dir of ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"]) {
    try {
      return Deno.realPathSync(join(dir, "libvulkan.so.1"));
    } catch { /* next */ }
  }
  throw new Error(
    "The Vulkan loader was not found: install Debian's libvulkan1 (apt-get install libvulkan1)",
  );
}

/** Files of the project that git does not ignore (or every file when this is not a git checkout). */
async function projectFiles(): Promise<string[]> {
  let files: string[];
  try {
    files =
      (await run("git", ["ls-files", "--cached", "--others", "--exclude-standard"], { cwd: ROOT }))
        .split("\n").filter(Boolean);
  } catch {
    files = [];
    const walk = (dir: string) => {
      for (const e of Deno.readDirSync(join(ROOT, dir))) {
        const p = dir ? `${dir}/${e.name}` : e.name;
        if (e.isDirectory) walk(p);
        else if (e.isFile) files.push(p);
      }
    };
    walk("");
  }
  return files.filter((f) => !EXCLUDE.some((re) => re.test(f)));
}

/**
 * The bundled app's deno.json: the project's, with only the imports its own files
 * use (test- and Node-only packages would otherwise be cached too: Dawn alone is
 * 130 MiB) and no lockfile (its entries name every package of the project).
 */
async function writeAppConfig(app: string, files: readonly string[]): Promise<void> {
  const config = JSON.parse(await Deno.readTextFile(join(app, "deno.json")));
  const sources = await Promise.all(
    files.filter((f) => f.endsWith(".ts")).map((f) => Deno.readTextFile(join(app, f))),
  );
  const used = (name: string) => {
    const spec = new RegExp(`(from|import)\\s*\\(?\\s*"${name.replace(/[/.]/g, "\\$&")}(/[^"]*)?"`);
    return sources.some((src) => spec.test(src));
  };
  config.imports = Object.fromEntries(
    Object.entries(config.imports ?? {}).filter(([name]) => used(name)),
  );
  config.lock = false;
  await Deno.writeTextFile(join(app, "deno.json"), JSON.stringify(config, null, 2) + "\n");
}

/** Builds the bundle folder (and tarball); returns their paths and the tarball's size. */
export async function buildBundle(
  o: { out?: string; tar?: boolean; log?: (line: string) => void } = {},
): Promise<{ dir: string; tarball: string | null; bytes: number }> {
  const log = o.log ?? (() => {});
  const { os, arch, denoPackage } = platform();
  const name = `batchwright-${os}-${arch}`;
  const outRoot = o.out ?? join(ROOT, "dist");
  const dir = join(outRoot, name);
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(join(dir, "bin"), { recursive: true });
  await Deno.mkdir(join(dir, "lib"), { recursive: true });
  const tmp = await Deno.makeTempDir({ prefix: "batchwright-bundle-" });
  try {
    log(`deno ${DENO_VERSION} from ${denoPackage}`);
    await Deno.copyFile(await denoBinary(denoPackage, tmp), join(dir, "bin", "deno"));
    await Deno.chmod(join(dir, "bin", "deno"), 0o755);
    log("Vulkan loader from libvulkan1");
    await Deno.copyFile(await vulkanLoader(tmp), join(dir, "lib", "libvulkan.so.1"));
    const files = await projectFiles();
    log(`project: ${files.length} files`);
    for (const f of files) {
      await Deno.mkdir(join(dir, "app", dirname(f)), { recursive: true });
      await Deno.copyFile(join(ROOT, f), join(dir, "app", f));
    }
    const app = join(dir, "app");
    await writeAppConfig(app, files);
    log("caching npm dependencies in deno_dir/");
    await run(join(dir, "bin", "deno"), [
      "cache",
      "--config",
      join(app, "deno.json"),
      join(app, "cli.ts"),
      join(app, "mod.ts"),
      join(app, "bench", "bench.ts"),
    ], { env: { DENO_DIR: join(dir, "deno_dir"), DENO_NO_UPDATE_CHECK: "1" } });
    await Deno.writeTextFile(join(dir, "batchwright"), LAUNCHER);
    await Deno.chmod(join(dir, "batchwright"), 0o755);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  if (o.tar === false) return { dir, tarball: null, bytes: 0 };
  const tarball = join(outRoot, `${name}.tar.gz`);
  log(`packing ${relative(Deno.cwd(), tarball) || basename(tarball)}`);
  await run("tar", ["-czf", tarball, "-C", outRoot, name]);
  const bytes = (await Deno.stat(tarball)).size;
  if (bytes > MAX_BUNDLE_BYTES) {
    throw new Error(`${tarball} is ${bytes} bytes, over the ${MAX_BUNDLE_BYTES}-byte limit`);
  }
  return { dir, tarball, bytes };
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { out: { type: "string" }, "no-tar": { type: "boolean" } },
  });
  try {
    const r = await buildBundle({
      out: values.out,
      tar: !values["no-tar"],
      log: (line) => console.error(line),
    });
    console.error(
      r.tarball
        ? `wrote ${r.tarball} (${(r.bytes / 2 ** 20).toFixed(1)} MiB) and ${r.dir}`
        : `wrote ${r.dir}`,
    );
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exitCode = 1;
  }
}
