/**
 * The `response_format` field of chat and completions bodies: `text`,
 * `json_object`, or `json_schema` with `{name, schema, strict}`. A JSON format
 * is turned into the engine's {@linkcode ResponseFormat} and its schema
 * converted once here, so an unsupported keyword is a 400 that names it before
 * anything runs (also under `--validate-only`).
 *
 * @module
 */

import { z } from "zod";
import { RequestError } from "../engine/types.ts";
import { type ResponseFormat, responseFormatGrammar } from "../engine/grammar.ts";
import { SchemaError } from "../engine/json_schema.ts";

/** The body field (unknown fields inside are ignored). */
export const responseFormatField = z.discriminatedUnion("type", [
  z.object({ type: z.literal("text") }),
  z.object({ type: z.literal("json_object") }),
  z.object({
    type: z.literal("json_schema"),
    json_schema: z.object({
      name: z.string().min(1).max(64).regex(/^[A-Za-z0-9_-]+$/, {
        error: "expected letters, digits, _ or - (at most 64)",
      }),
      description: z.string().nullish(),
      schema: z.union([z.record(z.string(), z.unknown()), z.boolean()]).nullish(),
      strict: z.boolean().nullish(),
    }),
  }),
], { error: 'expected {"type": "text" | "json_object" | "json_schema", ...}' }).nullish();

/** The parsed field. */
export type ResponseFormatField = z.infer<typeof responseFormatField>;

/** What a JSON format must not be combined with, and why. */
const CONFLICTS: readonly [field: string, reason: string][] = [
  ["stop", "a stop string could cut the document short"],
  ["min_tokens", "the document's end decides when generation stops"],
  ["ignore_eos", "the document's end decides when generation stops"],
];

/**
 * The engine's format for a body's `response_format` (undefined for text),
 * after checking that the schema can be enforced. Throws a 400
 * {@linkcode RequestError} naming the keyword otherwise.
 *
 * @example
 * ```ts
 * import { toResponseFormat } from "./response_format.ts";
 * toResponseFormat({ type: "json_object" }, {}); // { type: "json_object" }
 * try {
 *   const schema = { type: "string", pattern: "a+" };
 *   toResponseFormat({ type: "json_schema", json_schema: { name: "x", schema } }, {});
 * } catch (e) {
 *   console.log((e as Error).message); // ...: keyword "pattern" is not supported ...
 * }
 * ```
 */
export function toResponseFormat(
  field: ResponseFormatField,
  body: { stop?: unknown; min_tokens?: unknown; ignore_eos?: unknown },
): ResponseFormat | undefined {
  if (field === undefined || field === null || field.type === "text") return undefined;
  for (const [name, reason] of CONFLICTS) {
    const v = (body as Record<string, unknown>)[name];
    if (v !== undefined && v !== null && v !== false && v !== 0) {
      throw new RequestError(
        `${name} cannot be combined with response_format "${field.type}": ${reason}`,
        400,
        name,
        "invalid_value",
      );
    }
  }
  const format: ResponseFormat = field.type === "json_object"
    ? { type: "json_object" }
    : { type: "json_schema", schema: field.json_schema.schema ?? {} };
  try {
    responseFormatGrammar(format);
  } catch (e) {
    if (!(e instanceof SchemaError)) throw e;
    const where = "response_format.json_schema.schema";
    throw new RequestError(
      `${where}${e.message.replace(/^#/, "")}`,
      400,
      where,
      "invalid_value",
    );
  }
  return format;
}
