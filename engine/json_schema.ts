/**
 * JSON Schema → EBNF grammar (xgrammar's dialect) for constrained decoding.
 *
 * xgrammar compiles the grammar against the tokenizer and computes the token
 * masks (engine/grammar.ts); this file decides which documents are allowed.
 * We write the grammar ourselves instead of calling xgrammar 0.1.27's own
 * schema converter because that one, measured here, accepts `1.5` for
 * `maximum: 1` and any character in place of a bound's decimal point, lets
 * raw control characters into strings with `maxLength`, silently ignores
 * `multipleOf`, `uniqueItems`, `not`, ..., aborts the WebAssembly instance on
 * `minProperties`, and leaves whitespace unbounded inside free-form values.
 *
 * What the grammar allows is always a subset of what the schema allows (an
 * answer that completes validates), and every gap between JSON tokens holds at
 * most {@linkcode MAX_WHITESPACE} whitespace characters, so a schema without
 * unbounded strings, numbers or arrays always reaches its end.
 *
 * - `type` (one or a list), `enum`, `const`, `anyOf`, `$ref` to `#`, `#/$defs/…`
 *   or `#/definitions/…` (recursion allowed).
 * - objects: `properties` in schema order, `required`; only declared
 *   properties are generated (`additionalProperties` true or a schema narrows
 *   to them); without `properties` an object is a free map whose values follow
 *   `additionalProperties` (any value when absent or true, `{}` when false).
 * - arrays: `items`, `minItems`, `maxItems`.
 * - strings: `minLength`, `maxLength` (code points; `\u` escapes of surrogates
 *   are never produced), `format` date, time, date-time, uuid, ipv4.
 * - integers and numbers: `minimum`, `maximum`, `exclusiveMinimum`,
 *   `exclusiveMaximum` (bounded numbers are written without exponent, with at
 *   most {@linkcode FRACTION_DIGITS} decimals or the bound's own); integers
 *   have at most 15 digits, so they stay exact in a double.
 * - annotations (`title`, `description`, `default`, `examples`, …) are ignored.
 * Anything else is a {@linkcode SchemaError} naming the keyword and where it is.
 *
 * @module
 */

import { bound, integerRange, numberRange } from "./json_number_range.ts";

/** Most whitespace characters between two JSON tokens. */
export const MAX_WHITESPACE = 4;
/** Decimals a bounded number may have (more when a bound itself has more). */
export const FRACTION_DIGITS = 6;
/** Digits of an integer part: 15 keeps every integer exact in a double. */
export const INTEGER_DIGITS = 15;

/** A schema the grammar cannot express; `path` is a JSON-pointer-like location. */
export class SchemaError extends Error {
  constructor(readonly path: string, readonly keyword: string | null, message: string) {
    super(message);
    this.name = "SchemaError";
  }
}

const ANNOTATIONS = new Set([
  "title",
  "description",
  "default",
  "examples",
  "$schema",
  "$id",
  "$comment",
  "deprecated",
  "readOnly",
  "writeOnly",
  "$defs",
  "definitions",
]);
const KEYWORDS: Record<string, readonly string[]> = {
  any: ["type", "enum", "const", "anyOf", "$ref"],
  object: ["properties", "required", "additionalProperties"],
  array: ["items", "minItems", "maxItems"],
  string: ["minLength", "maxLength", "format"],
  number: ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"],
};
const TYPE_OF_KEYWORD = new Map<string, string>();
for (const [type, words] of Object.entries(KEYWORDS)) {
  if (type !== "any") { for (const w of words) TYPE_OF_KEYWORD.set(w, type); }
}
const SUPPORTED = new Set(Object.values(KEYWORDS).flat());
const TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"];
const FORMATS = ["date", "time", "date-time", "uuid", "ipv4"];

/** A schema object (booleans are handled apart). */
export type Schema = Record<string, unknown>;

/** One string character (without its rule, so that chains of rules stay flat). */
const CHAR = `([^"\\\\\\0-\\x1f] | "\\\\" escape)`;
/**
 * Longest `maxLength` (or `minLength`) enforced. A bounded string is a chain of
 * rules, one per character, because a repetition (`char{0,64}`) makes xgrammar
 * check most tokens one by one at every step inside it (p95 50–240 ms a mask at
 * 103k tokens); each rule of the chain costs compile time instead (~0.3 s on a
 * loaded 2-core machine at 103k tokens), once per distinct length pair.
 */
export const MAX_STRING_LENGTH = 256;

/** The shared rules every grammar starts with. */
const BASE_RULES = [
  `ws ::= [ \\n\\t]{0,${MAX_WHITESPACE}}`,
  // Strings are right-recursive rules, never `char*` or `char{m,n}`: with a repetition
  // xgrammar checks most of the vocabulary token by token at every step (~450 ms a mask at
  // 103k tokens, measured), with recursion its precomputed per-rule masks apply (~0.2 ms).
  // A character is anything but `"`, `\` and controls, or an escape other than a surrogate;
  // xgrammar decodes UTF-8 leniently, so engine/grammar.ts masks tokens that would break it.
  `escape ::= ["\\\\/bfnrt] | "u" ([0-9A-Ca-cE-Fe-f] hex hex hex | [Dd] [0-7] hex hex)`,
  `hex ::= [0-9A-Fa-f]`,
  `string ::= "\\"" string_rest`,
  `string_rest ::= "\\"" | ${CHAR} string_rest`,
  `integer ::= "-"? ("0" | [1-9] [0-9]{0,${INTEGER_DIGITS - 1}})`,
  `number ::= integer ("." [0-9]{1,${INTEGER_DIGITS}})? ([eE] [+-]? [0-9]{1,2})?`,
  `boolean ::= "true" | "false"`,
  `null ::= "null"`,
  `value ::= object | array | string | number | boolean | null`,
  `object ::= "{" ws (string ws ":" ws value (ws "," ws string ws ":" ws value)*)? ws "}"`,
  `array ::= "[" ws (value (ws "," ws value)*)? ws "]"`,
];

/**
 * Converts a schema to an EBNF grammar whose root rule is `root`.
 *
 * @example
 * ```ts
 * import { schemaToEbnf } from "./json_schema.ts";
 * const ebnf = schemaToEbnf({ type: "object", properties: { ok: { type: "boolean" } }, required: ["ok"] });
 * ebnf.includes("root ::="); // true
 * ```
 */
export function schemaToEbnf(schema: unknown): string {
  return new Converter(schema).run();
}

class Converter {
  readonly #rules: string[] = [...BASE_RULES];
  readonly #refs = new Map<string, string>();
  /** Chains of bounded-string rules by "min,max", shared within the grammar. */
  readonly #lengths = new Map<string, string>();
  #next = 0;
  constructor(readonly root: unknown) {}

  run(): string {
    const body = this.#schema(this.root, "#");
    this.#rules.push(`root ::= ${body}`);
    return this.#rules.join("\n") + "\n";
  }

  /** A new rule named after `hint`; returns its name. */
  #rule(hint: string, body: string): string {
    const name = `${hint}_${this.#next++}`;
    this.#rules.push(`${name} ::= ${body}`);
    return name;
  }

  /** An EBNF expression for `schema` at `path`. */
  #schema(schema: unknown, path: string): string {
    if (schema === true) return "value";
    if (schema === false) {
      throw new SchemaError(path, null, `${path}: the schema false allows nothing`);
    }
    if (!isObject(schema)) {
      throw new SchemaError(path, null, `${path}: a schema must be an object or a boolean`);
    }
    for (const key of Object.keys(schema)) {
      if (ANNOTATIONS.has(key)) continue;
      if (!SUPPORTED.has(key)) {
        throw new SchemaError(
          path,
          key,
          `${path}: keyword "${key}" is not supported in response_format schemas ` +
            `(supported: ${[...SUPPORTED].join(", ")})`,
        );
      }
    }
    if ("$ref" in schema) return this.#ref(schema, path);
    if ("anyOf" in schema) return this.#anyOf(schema, path);
    if ("const" in schema) return literal(JSON.stringify(schema.const));
    if ("enum" in schema) {
      const values = schema.enum;
      if (!Array.isArray(values) || values.length === 0) {
        throw new SchemaError(path, "enum", `${path}/enum: expected a non-empty list`);
      }
      return group(values.map((v) => literal(JSON.stringify(v))));
    }
    const types = this.#types(schema, path);
    return group(types.map((t) => this.#typed(t, schema, path)));
  }

  #types(schema: Schema, path: string): string[] {
    const t = schema.type;
    if (t === undefined) {
      const implied = new Set<string>();
      for (const key of Object.keys(schema)) {
        const type = TYPE_OF_KEYWORD.get(key);
        if (type !== undefined) implied.add(type);
      }
      if (implied.size > 1) {
        throw new SchemaError(
          path,
          "type",
          `${path}: give "type" (keywords of several types: ${[...implied].join(", ")})`,
        );
      }
      return implied.size === 1 ? [...implied] : ["any"];
    }
    const list = Array.isArray(t) ? t : [t];
    if (list.length === 0 || list.some((x) => typeof x !== "string" || !TYPES.includes(x))) {
      throw new SchemaError(
        path,
        "type",
        `${path}/type: expected one of ${TYPES.join(", ")} or a list of them`,
      );
    }
    return [...new Set(list as string[])];
  }

  #typed(type: string, s: Schema, path: string): string {
    switch (type) {
      case "any":
        return "value";
      case "boolean":
      case "null":
        return type;
      case "string":
        return this.#string(s, path);
      case "integer":
      case "number":
        return this.#number(type, s, path);
      case "array":
        return this.#array(s, path);
      default:
        return this.#object(s, path);
    }
  }

  #ref(s: Schema, path: string): string {
    const ref = s.$ref;
    for (const key of Object.keys(s)) {
      if (key !== "$ref" && !ANNOTATIONS.has(key)) {
        throw new SchemaError(path, key, `${path}: "${key}" beside "$ref" is not supported`);
      }
    }
    if (typeof ref !== "string") {
      throw new SchemaError(path, "$ref", `${path}/$ref: expected a string`);
    }
    const known = this.#refs.get(ref);
    if (known !== undefined) return known;
    const m = /^#(?:\/(\$defs|definitions)\/([^/]+))?$/.exec(ref);
    const target = m === null
      ? undefined
      : m[1] === undefined
      ? this.root
      : (isObject(this.root) && isObject(this.root[m[1]])
        ? (this.root[m[1]] as Schema)[decodePointer(m[2]!)]
        : undefined);
    if (target === undefined) {
      throw new SchemaError(
        path,
        "$ref",
        `${path}/$ref: "${ref}" does not name a schema (only "#", "#/$defs/NAME" and ` +
          `"#/definitions/NAME" are supported)`,
      );
    }
    // Name the rule before converting its body, so recursive references find it.
    const name = `ref_${this.#next++}`;
    this.#refs.set(ref, name);
    const body = this.#schema(target, ref);
    this.#rules.push(`${name} ::= ${body}`);
    return name;
  }

  #anyOf(s: Schema, path: string): string {
    for (const key of Object.keys(s)) {
      if (key !== "anyOf" && !ANNOTATIONS.has(key)) {
        throw new SchemaError(path, key, `${path}: "${key}" beside "anyOf" is not supported`);
      }
    }
    const list = s.anyOf;
    if (!Array.isArray(list) || list.length === 0) {
      throw new SchemaError(path, "anyOf", `${path}/anyOf: expected a non-empty list of schemas`);
    }
    return group(list.map((sub, i) => this.#schema(sub, `${path}/anyOf/${i}`)));
  }

  #string(s: Schema, path: string): string {
    const format = s.format;
    if (format !== undefined) {
      if (typeof format !== "string" || !FORMATS.includes(format)) {
        throw new SchemaError(
          path,
          "format",
          `${path}/format: "${String(format)}" is not supported (supported: ${FORMATS.join(", ")})`,
        );
      }
      if (s.minLength !== undefined || s.maxLength !== undefined) {
        throw new SchemaError(path, "format", `${path}: "format" with a length is not supported`);
      }
      return `"\\"" ${FORMAT_RULES[format]} "\\""`;
    }
    const min = count(s, "minLength", path) ?? 0;
    const max = count(s, "maxLength", path);
    if (min === 0 && max === undefined) return "string";
    if (max !== undefined && max < min) {
      throw new SchemaError(path, "maxLength", `${path}: maxLength is below minLength`);
    }
    for (const [key, v] of [["minLength", min], ["maxLength", max ?? 0]] as const) {
      if (v > MAX_STRING_LENGTH) {
        throw new SchemaError(
          path,
          key,
          `${path}/${key}: ${v} is above ${MAX_STRING_LENGTH}, the longest length enforced`,
        );
      }
    }
    const key = `${min},${max ?? ""}`;
    const known = this.#lengths.get(key);
    if (known !== undefined) return `"\\"" ${known}`;
    // Rule k: k characters written so far; the quote may close from `min` on.
    const last = max ?? min;
    const first = this.#next;
    this.#next += last + 1;
    const name = (k: number) => `str_${first}_${k}`;
    for (let k = 0; k <= last; k++) {
      const alts = [
        ...(k >= min ? [`"\\""`] : []),
        ...(k < last
          ? [`${CHAR} ${name(k + 1)}`]
          : max === undefined
          ? [`${CHAR} string_rest`]
          : []),
      ];
      this.#rules.push(`${name(k)} ::= ${group(alts)}`);
    }
    this.#lengths.set(key, name(0));
    return `"\\"" ${name(0)}`;
  }

  #number(type: "integer" | "number", s: Schema, path: string): string {
    const lower = bound(s, "minimum", "exclusiveMinimum", "max", path);
    const upper = bound(s, "maximum", "exclusiveMaximum", "min", path);
    if (lower === null && upper === null) return type;
    const body = type === "integer"
      ? integerRange(lower, upper, path)
      : numberRange(lower, upper, path);
    return this.#rule(type, body);
  }

  #array(s: Schema, path: string): string {
    const item = s.items === undefined ? "value" : this.#schema(s.items, `${path}/items`);
    const min = count(s, "minItems", path) ?? 0;
    const max = count(s, "maxItems", path);
    if (max !== undefined && max < min) {
      throw new SchemaError(path, "maxItems", `${path}: maxItems is below minItems`);
    }
    if (max === 0) return `"[" ws "]"`;
    const name = this.#rule("item", item);
    const more = `(ws "," ws ${name}){${Math.max(0, min - 1)},${max === undefined ? "" : max - 1}}`;
    const items = `${name} ${more}`;
    return `"[" ws ${min === 0 ? `(${items})?` : items} ws "]"`;
  }

  #object(s: Schema, path: string): string {
    const props = s.properties;
    const additional = s.additionalProperties;
    const required = s.required ?? [];
    if (!Array.isArray(required) || required.some((r) => typeof r !== "string")) {
      throw new SchemaError(path, "required", `${path}/required: expected a list of names`);
    }
    if (props === undefined) {
      for (const name of required) {
        throw new SchemaError(path, "required", `${path}/required: "${name}" is not in properties`);
      }
      if (additional === false) return `"{" ws "}"`;
      const value = additional === undefined || additional === true
        ? "value"
        : this.#schema(additional, `${path}/additionalProperties`);
      const entry = this.#rule("entry", `string ws ":" ws ${value}`);
      return `"{" ws (${entry} (ws "," ws ${entry})*)? ws "}"`;
    }
    if (!isObject(props)) {
      throw new SchemaError(path, "properties", `${path}/properties: expected an object`);
    }
    if (additional !== undefined && typeof additional !== "boolean" && !isObject(additional)) {
      throw new SchemaError(
        path,
        "additionalProperties",
        `${path}/additionalProperties: expected a boolean or a schema`,
      );
    }
    const names = Object.keys(props);
    for (const name of required) {
      if (!names.includes(name)) {
        throw new SchemaError(path, "required", `${path}/required: "${name}" is not in properties`);
      }
    }
    const entries = names.map((name) =>
      `${literal(JSON.stringify(name))} ws ":" ws ${
        this.#schema(props[name], `${path}/properties/${encodePointer(name)}`)
      }`
    );
    // tail[i]: properties i.. after at least one was written; head[i]: before any was.
    const n = names.length;
    let tail = `""`;
    let head = `""`;
    for (let i = n - 1; i >= 0; i--) {
      const optional = !required.includes(names[i]!);
      const kv = this.#rule("prop", entries[i]!);
      const nextTail = tail;
      tail = this.#rule(
        "tail",
        group([`ws "," ws ${kv} ${nextTail}`, ...(optional ? [nextTail] : [])]),
      );
      head = this.#rule("head", group([`${kv} ${nextTail}`, ...(optional ? [head] : [])]));
    }
    return `"{" ws ${head} ws "}"`;
  }
}

/** The string formats, without their quotes (a subset of what ajv-formats accepts). */
const FORMAT_RULES: Record<string, string> = (() => {
  const d2 = "[0-9] [0-9]";
  const date = `[0-9]{4} "-" (("0" [13578] | "1" [02]) "-" ("0" [1-9] | [12] [0-9] | "3" [01]) | ` +
    `("0" [469] | "11") "-" ("0" [1-9] | [12] [0-9] | "30") | "02-" ("0" [1-9] | "1" [0-9] | "2" [0-8]))`;
  const time = `([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? ` +
    `([Zz] | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])`;
  const octet = `("25" [0-5] | "2" [0-4] [0-9] | "1" ${d2} | [1-9] [0-9] | [0-9])`;
  const h = "[0-9a-fA-F]";
  return {
    date: `(${date})`,
    time: `(${time})`,
    "date-time": `(${date} [Tt] ${time})`,
    uuid: `(${h}{8} "-" ${h}{4} "-" ${h}{4} "-" ${h}{4} "-" ${h}{12})`,
    ipv4: `(${octet} "." ${octet} "." ${octet} "." ${octet})`,
  };
})();

/** The JSON text `text` as an EBNF string literal. */
function literal(text: string): string {
  let out = '"';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (ch === '"' || ch === "\\") out += "\\" + ch;
    else if (cp >= 0x20 && cp < 0x7f) out += ch;
    else if (cp <= 0xffff) out += "\\u" + cp.toString(16).padStart(4, "0");
    else out += "\\U" + cp.toString(16).padStart(8, "0");
  }
  return out + '"';
}

/** `(a | b | ...)`, or the one alternative alone. */
export function group(alts: readonly string[]): string {
  return alts.length === 1 ? alts[0]! : `(${alts.join(" | ")})`;
}

function count(s: Schema, key: string, path: string): number | undefined {
  const v = s[key];
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 100_000) {
    throw new SchemaError(path, key, `${path}/${key}: expected an integer in 0..100000`);
  }
  return v;
}

function isObject(v: unknown): v is Schema {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function encodePointer(name: string): string {
  return name.replaceAll("~", "~0").replaceAll("/", "~1");
}

function decodePointer(part: string): string {
  return decodeURIComponent(part).replaceAll("~1", "/").replaceAll("~0", "~");
}
