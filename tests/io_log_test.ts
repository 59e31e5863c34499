/** The run's log lines: text for people, JSON for collectors, filtered by level. */
import { assertEquals } from "./_assert.ts";
import { createLogger } from "../io/log.ts";

const capture = () => {
  const lines: string[] = [];
  return { lines, write: (l: string) => void lines.push(l) };
};
const now = () => new Date("2026-01-02T03:04:05.000Z");

Deno.test("json logs are one object per line: time, level, msg, then the fields", () => {
  const out = capture();
  const log = createLogger({ format: "json", write: out.write, now });
  log.info("loaded", { model: "ernie-tiny", level: "not a level" });
  log.error("broke");
  assertEquals(out.lines, [
    '{"time":"2026-01-02T03:04:05.000Z","level":"info","msg":"loaded","model":"ernie-tiny"}\n',
    '{"time":"2026-01-02T03:04:05.000Z","level":"error","msg":"broke"}\n',
  ]);
});

Deno.test("text logs keep the CLI's prefixes and drop the fields", () => {
  const out = capture();
  const log = createLogger({ write: out.write });
  log.info("3/10 done", { done: 3 });
  log.warn("cancelling");
  log.error('Cannot read input "x"');
  assertEquals(out.lines, [
    "batchwright: 3/10 done\n",
    "batchwright: warning: cancelling\n",
    'error: Cannot read input "x"\n',
  ]);
});

Deno.test("a level hides everything less severe", () => {
  const out = capture();
  const log = createLogger({ level: "warn", write: out.write });
  log.debug("d");
  log.info("i");
  log.warn("w");
  log.error("e");
  assertEquals(out.lines.length, 2);
  assertEquals([log.enabled("info"), log.enabled("warn")], [false, true]);
  const debug = capture();
  createLogger({ level: "debug", write: debug.write }).debug("d");
  assertEquals(debug.lines, ["batchwright: debug: d\n"]);
});
