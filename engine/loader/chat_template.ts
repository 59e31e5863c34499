/**
 * Where a model directory keeps its chat template, and ERNIE-4.5's own
 * template for directories that ship none.
 *
 * @module
 */
import { join } from "node:path";

/** ERNIE-4.5's chat template, exactly as in baidu/ERNIE-4.5-0.3B-PT's tokenizer_config.json. */
export const ERNIE_CHAT_TEMPLATE =
  '{%- if not add_generation_prompt is defined -%}\n    {%- set add_generation_prompt = true -%}\n{%- endif -%}\n{%- if not cls_token is defined -%}\n    {%- set cls_token = "<|begin_of_sentence|>" -%}\n{%- endif -%}\n{%- if not sep_token is defined -%}\n    {%- set sep_token = "<|end_of_sentence|>" -%}\n{%- endif -%}\n{{- cls_token -}}\n{%- for message in messages -%}\n    {%- if message["role"] == "user" -%}\n        {{- "User: " + message["content"] + "\n" -}}\n    {%- elif message["role"] == "assistant" -%}\n        {{- "Assistant: " + message["content"] + sep_token -}}\n    {%- elif message["role"] == "system" -%}\n        {{- message["content"] + "\n" -}}\n    {%- endif -%}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{- "Assistant: " -}}\n{%- endif -%}';

/** The template in a `chat_template` value: a string, or a list of `{name, template}` (the "default" one). */
export function pickTemplate(value: unknown): string | null {
  if (typeof value === "string") return value;
  if (Array.isArray(value)) {
    const named = value.filter((t): t is { name: unknown; template: string } =>
      typeof t === "object" && t !== null &&
      typeof (t as { template?: unknown }).template === "string"
    );
    return (named.find((t) => t.name === "default") ?? named[0])?.template ?? null;
  }
  return null;
}

/**
 * The chat template of a model directory: `tokenizer_config.json`'s
 * `chat_template`, else `chat_template.jinja`, else `chat_template.json`
 * (newer Hugging Face exports), else null.
 */
export async function findChatTemplate(
  dir: string,
  tokenizerConfig: Record<string, unknown>,
): Promise<string | null> {
  const inline = pickTemplate(tokenizerConfig["chat_template"]);
  if (inline !== null) return inline;
  try {
    return await Deno.readTextFile(join(dir, "chat_template.jinja"));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  try {
    const file = join(dir, "chat_template.json");
    return pickTemplate(
      (JSON.parse(await Deno.readTextFile(file)) as Record<string, unknown>)["chat_template"],
    );
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return null;
}
