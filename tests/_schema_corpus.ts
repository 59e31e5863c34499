/**
 * The schema corpus the structured-output tests share: one of each supported
 * feature, and the mixes batch users send.
 *
 * @module
 */
import type { ResponseFormat } from "../engine/types.ts";

/** A `json_schema` response format. */
export const schema = (s: unknown): ResponseFormat => ({ type: "json_schema", schema: s });

/** The schema corpus: one of each feature, and the mixes batch users send. */
export const CORPUS: Record<string, ResponseFormat> = {
  json_object: { type: "json_object" },
  flat: schema({
    type: "object",
    properties: {
      name: { type: "string", maxLength: 8 },
      age: { type: "integer", minimum: 0, maximum: 120 },
      ok: { type: "boolean" },
      none: { type: "null" },
    },
    required: ["name", "age", "ok", "none"],
    additionalProperties: false,
  }),
  optional: schema({
    type: "object",
    properties: {
      a: { type: "boolean" },
      b: { enum: ["x", "y", 3, null] },
      c: { const: "fixed" },
      d: { type: "integer", exclusiveMinimum: -5, exclusiveMaximum: 5 },
    },
    required: ["c"],
  }),
  nested: schema({
    type: "object",
    properties: {
      user: {
        type: "object",
        properties: {
          id: { type: "integer", minimum: 1, maximum: 99999 },
          tags: { type: "array", items: { enum: ["a", "b", "c"] }, minItems: 1, maxItems: 3 },
        },
        required: ["id", "tags"],
      },
      score: { type: "number", minimum: 0, maximum: 1 },
    },
    required: ["user", "score"],
  }),
  arrays: schema({
    type: "array",
    items: { type: "array", items: { type: "boolean" }, minItems: 2, maxItems: 2 },
    minItems: 1,
    maxItems: 4,
  }),
  enums: schema({
    type: "object",
    properties: {
      label: { enum: ["positive", "negative", "neutral"] },
      confident: { type: "boolean" },
      level: { enum: [1, 2, 3] },
    },
    required: ["label", "confident", "level"],
  }),
  bounded_numbers: schema({
    type: "object",
    properties: {
      t: { type: "number", minimum: -2.5, maximum: 7.25 },
      p: { type: "number", exclusiveMinimum: 0, exclusiveMaximum: 1 },
      n: { type: "integer", minimum: -1000, maximum: -7 },
      big: { type: "number", minimum: 100.5 },
    },
    required: ["t", "p", "n", "big"],
  }),
  strings: schema({
    type: "object",
    properties: {
      short: { type: "string", minLength: 2, maxLength: 5 },
      day: { type: "string", format: "date" },
      at: { type: "string", format: "date-time" },
      id: { type: "string", format: "uuid" },
      ip: { type: "string", format: "ipv4" },
      clock: { type: "string", format: "time" },
    },
    required: ["short", "day", "at", "id", "ip", "clock"],
  }),
  any_of: schema({
    anyOf: [
      {
        type: "object",
        properties: { kind: { const: "circle" }, r: { type: "number", minimum: 0 } },
        required: ["kind", "r"],
      },
      {
        type: "object",
        properties: { kind: { const: "square" }, side: { type: "integer" } },
        required: ["kind", "side"],
      },
      { type: ["string", "null"], maxLength: 3 },
    ],
  }),
  refs: schema({
    $defs: {
      node: {
        type: "object",
        properties: {
          v: { type: "integer", minimum: 0, maximum: 9 },
          next: { anyOf: [{ $ref: "#/$defs/node" }, { type: "null" }] },
        },
        required: ["v", "next"],
      },
    },
    $ref: "#/$defs/node",
  }),
  free_map: schema({ type: "object", additionalProperties: { type: "integer" } }),
  any_value: schema({}),
};

/**
 * Formats whose documents have a bounded length (no free string, unbounded
 * array or recursion): generation must always reach their end.
 */
export const BOUNDED: readonly string[] = [
  "flat",
  "optional",
  "nested",
  "arrays",
  "enums",
  "bounded_numbers",
  "strings",
  "any_of",
];
