/**
 * The model's tokenizer: `tokenizer.json` through `@huggingface/tokenizers`,
 * and the chat template of `tokenizer_config.json` through
 * `@huggingface/jinja`.
 *
 * Chat prompts are encoded so that text a user wrote is never read as a
 * control token: the template is rendered with placeholders in place of the
 * messages' contents, which tells which characters are the template's own;
 * special tokens are recognised only there, and everything between them
 * (template text and message contents together, as the reference
 * implementation tokenizes it) is encoded with special tokens treated as
 * plain text.
 *
 * @module
 */

import { ERNIE_CHAT_TEMPLATE, findChatTemplate, pickTemplate } from "./chat_template.ts";
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import { join } from "node:path";
import { parseSentencePieceModel, sentencePieceToTokenizerJson } from "./sentencepiece.ts";
type Json = Record<string, unknown>;

/** One chat message as the template sees it (text parts already joined). */
export interface ChatMessage {
  readonly role: string;
  readonly content: string;
}

/** A range of rendered text that came from a message's content: `[start, end)`. */
interface TextSpan {
  readonly start: number;
  readonly end: number;
}

/** Options of {@linkcode ModelTokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** End with the assistant's turn opening (default true). */
  readonly addGenerationPrompt?: boolean;
  /** Extra template variables (a request's `chat_template_kwargs`). */
  readonly kwargs?: Readonly<Record<string, unknown>>;
}

interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
}

/**
 * Encodes, decodes and renders chat prompts for one model.
 *
 * @example
 * ```ts
 * import { ModelTokenizer } from "./tokenizer.ts";
 * const tok = await ModelTokenizer.load("models/ernie-tiny");
 * const ids = tok.encodeChat([{ role: "user", content: "hi" }]);
 * tok.decode(ids, { skipSpecialTokens: false }); // "<|begin_of_sentence|>User: hi\nAssistant: "
 * ```
 */
export class ModelTokenizer {
  /** Number of real entries (ids ≥ this are padding rows of the embedding). */
  readonly vocabSize: number;
  /** Ids that end generation according to the tokenizer files. */
  readonly eosTokenIds: readonly number[];
  /** Ids of special (control) tokens. */
  readonly specialTokenIds: ReadonlySet<number>;
  /** The template source, or null when `tokenizer_config.json` has none. */
  readonly chatTemplate: string | null;

  readonly #tok: Tokenizer;
  /** Same tokenizer with special tokens not split out (they read as text). */
  readonly #plain: Tokenizer;
  readonly #config: Json;
  readonly #special: readonly AddedTokenJson[];
  readonly #specialByFirst = new Map<string, AddedTokenJson[]>();
  readonly #template: Template | null;
  readonly #cleanUpSpaces: boolean;
  readonly #bytesCache = new Map<number, Uint8Array>();

  private constructor(tokenizerJson: Json, config: Json, source: string) {
    const added = Array.isArray(tokenizerJson["added_tokens"])
      ? tokenizerJson["added_tokens"] as AddedTokenJson[]
      : [];
    this.#config = config;
    try {
      // The library copies the vocabulary into its own structures; the JSON is only read.
      this.#tok = new Tokenizer(tokenizerJson, config);
      this.#plain = new Tokenizer(
        { ...tokenizerJson, added_tokens: added.filter((t) => !t.special) },
        config,
      );
    } catch (e) {
      throw new Error(`Cannot load tokenizer "${source}": ${(e as Error).message}`);
    }
    this.#special = added.filter((t) => t.special && t.content.length > 0);
    for (const t of this.#special) {
      const first = t.content[0] as string;
      const list = this.#specialByFirst.get(first) ?? [];
      list.push(t);
      list.sort((a, b) => b.content.length - a.content.length); // longest match first
      this.#specialByFirst.set(first, list);
    }
    this.specialTokenIds = new Set(this.#special.map((t) => t.id));
    let size = 0;
    for (const id of this.#tok.get_vocab(true).values()) size = Math.max(size, id + 1);
    this.vocabSize = size;
    this.#cleanUpSpaces = config["clean_up_tokenization_spaces"] === true;

    const eos = new Set<number>();
    const eosText = tokenText(config["eos_token"]);
    const eosId = eosText === undefined ? undefined : this.#tok.token_to_id(eosText);
    if (eosId !== undefined) eos.add(eosId);
    const eosSentence = this.#tok.token_to_id("<|end_of_sentence|>");
    if (eosSentence !== undefined) eos.add(eosSentence);
    this.eosTokenIds = [...eos];

    this.chatTemplate = pickTemplate(config["chat_template"]);
    try {
      this.#template = this.chatTemplate === null ? null : new Template(this.chatTemplate);
    } catch (e) {
      throw new Error(`Cannot parse chat_template of "${source}": ${(e as Error).message}`);
    }
  }

  /**
   * Reads `DIR/tokenizer.json` (or, without it, the SentencePiece
   * `DIR/tokenizer.model`) and (optionally) `DIR/tokenizer_config.json`.
   *
   * @example
   * ```ts
   * import { ModelTokenizer } from "./tokenizer.ts";
   * const tok = await ModelTokenizer.load("models/ernie-tiny");
   * ```
   */
  static async load(dir: string): Promise<ModelTokenizer> {
    const file = join(dir, "tokenizer.json");
    let tokenizerJson: Json;
    let source = file;
    try {
      tokenizerJson = parseObject(await Deno.readTextFile(file), file);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      // --- SentencePiece fallback (Paddle checkpoints ship only tokenizer.model) ---
      source = join(dir, "tokenizer.model");
      let bytes: Uint8Array;
      try {
        bytes = await Deno.readFile(source);
      } catch (e) {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
        throw new Error(
          `Cannot load tokenizer from "${dir}": neither tokenizer.json nor tokenizer.model ` +
            `(SentencePiece) found there`,
        );
      }
      tokenizerJson = sentencePieceToTokenizerJson(parseSentencePieceModel(bytes, source), source);
      // --- end SentencePiece fallback ---
    }
    const configFile = join(dir, "tokenizer_config.json");
    let config: Json = {};
    try {
      config = parseObject(await Deno.readTextFile(configFile), configFile);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    // Newer exports keep the template in its own file; a directory with none gets ERNIE-4.5's.
    const template = await findChatTemplate(dir, config) ?? ERNIE_CHAT_TEMPLATE;
    return new ModelTokenizer(tokenizerJson, { ...config, chat_template: template }, source);
  }

  /**
   * Builds a tokenizer from already parsed `tokenizer.json` and
   * `tokenizer_config.json` objects.
   *
   * @example
   * ```ts
   * import { ModelTokenizer } from "./tokenizer.ts";
   * const tokenizerJson = JSON.parse(await Deno.readTextFile("models/ernie-tiny/tokenizer.json"));
   * const tok = ModelTokenizer.fromObjects(tokenizerJson, { chat_template: "{{ messages[0].content }}" });
   * ```
   */
  static fromObjects(
    tokenizerJson: Readonly<Record<string, unknown>>,
    tokenizerConfig: Readonly<Record<string, unknown>> = {},
    source = "<memory>",
  ): ModelTokenizer {
    return new ModelTokenizer({ ...tokenizerJson }, { ...tokenizerConfig }, source);
  }

  /** Text → ids. Special tokens in the text are recognised; nothing is added unless asked. */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    return this.#tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? false }).ids;
  }

  /** Text → ids with special-token text read as plain text (what users write). */
  encodePlain(text: string): number[] {
    if (text.length === 0) return [];
    const ids = this.#plain.encode(text, { add_special_tokens: false }).ids;
    // A special token that is also a plain piece of the model could still come
    // out of the model's own segmentation: spell it in byte-fallback pieces.
    if (!ids.some((id) => this.specialTokenIds.has(id))) return ids;
    return ids.flatMap((id) => {
      if (!this.specialTokenIds.has(id)) return [id];
      const content = this.#tok.id_to_token(id) ?? "";
      const bytes = [...new TextEncoder().encode(content)].map((b) =>
        this.#tok.token_to_id(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`)
      );
      return bytes.every((b) => b !== undefined) ? bytes as number[] : [id];
    });
  }

  /** Ids → text. Special tokens are dropped unless `skipSpecialTokens` is false. */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return "";
    return this.#tok.decode([...ids], {
      skip_special_tokens: options.skipSpecialTokens ?? true,
      clean_up_tokenization_spaces: this.#cleanUpSpaces,
    });
  }

  /** Renders the chat template to a string (tokens still as text). */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (this.#template === null) {
      throw new Error("The tokenizer has no chat_template: use /v1/completions for plain prompts");
    }
    const vars: Record<string, unknown> = {
      bos_token: "",
      eos_token: "",
      unk_token: "",
      pad_token: "",
    };
    // Every `*_token` of the config (bos, eos, cls, sep, mask, sys_start, ...).
    for (const [name, value] of Object.entries(this.#config)) {
      const text = name.endsWith("_token") ? tokenText(value) : undefined;
      if (text !== undefined) vars[name] = text;
    }
    vars["add_generation_prompt"] = options.addGenerationPrompt ?? true;
    Object.assign(vars, options.kwargs);
    vars["messages"] = messages.map((m) => ({ role: m.role, content: m.content }));
    return this.#template.render(vars);
  }

  /**
   * Renders the chat template and encodes it, recognising special tokens only
   * in the template's own text, never inside a message's content.
   */
  encodeChat(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): number[] {
    const { text, spans } = renderWithSpans(messages, (ms) => this.applyChatTemplate(ms, options));
    return this.#encodeWithSpans(text, spans);
  }

  /** The UTF-8 bytes a token stands for (one byte for a byte-fallback piece). */
  tokenBytes(id: number): Uint8Array {
    const cached = this.#bytesCache.get(id);
    if (cached !== undefined) return cached;
    const piece = this.#tok.id_to_token(id) ?? "";
    const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(piece);
    let bytes: Uint8Array;
    if (byte !== null && byte[1] !== undefined) {
      bytes = new Uint8Array([parseInt(byte[1], 16)]);
    } else if (this.specialTokenIds.has(id)) {
      bytes = new TextEncoder().encode(piece);
    } else {
      // Decode after an anchor so decoders that strip a first leading space
      // keep this token's own space.
      const anchor = this.#anchorId();
      const withAnchor = this.decode([anchor, id], { skipSpecialTokens: false });
      const alone = this.decode([anchor], { skipSpecialTokens: false });
      bytes = new TextEncoder().encode(
        withAnchor.startsWith(alone) ? withAnchor.slice(alone.length) : this.decode([id]),
      );
    }
    this.#bytesCache.set(id, bytes);
    return bytes;
  }

  /** A token's text for logprobs (an incomplete UTF-8 byte shows as U+FFFD). */
  tokenText(id: number): string {
    return new TextDecoder().decode(this.tokenBytes(id));
  }

  /** Alias of {@linkcode tokenBytes} as a plain array, for JSON `bytes` fields. */
  idToBytes(id: number): number[] {
    return [...this.tokenBytes(id)];
  }

  #anchorId(): number {
    return this.#tok.token_to_id("a") ?? this.#tok.token_to_id("▁a") ?? 0;
  }

  #encodeWithSpans(text: string, spans: readonly TextSpan[]): number[] {
    const protectedAt = (start: number, end: number) =>
      spans.some((s) => start < s.end && end > s.start);
    const ids: number[] = [];
    let segmentStart = 0;
    let i = 0;
    let trimNext = false;
    const pushSegment = (end: number, trimEnd: boolean) => {
      let segment = text.slice(segmentStart, end);
      if (trimNext) segment = segment.trimStart();
      if (trimEnd) segment = segment.trimEnd();
      trimNext = false;
      ids.push(...this.encodePlain(segment));
    };
    while (i < text.length) {
      const match = this.#specialByFirst.get(text[i] as string)?.find((t) =>
        text.startsWith(t.content, i)
      );
      if (match === undefined || protectedAt(i, i + match.content.length)) {
        i++;
        continue;
      }
      pushSegment(i, match.lstrip === true);
      ids.push(match.id);
      trimNext = match.rstrip === true;
      i += match.content.length;
      segmentStart = i;
    }
    pushSegment(text.length, false);
    return ids;
  }
}

/**
 * Renders messages and finds where each content landed. The template is run
 * a second time with a placeholder per non-empty content; the template's own
 * text is what lies between placeholders, and the real rendering must be
 * those parts with the contents between them (a template may have changed a
 * content, e.g. stripped it: then each content is what lies between two
 * parts). When even that fails, no span is known and nothing is protected.
 */
function renderWithSpans(
  messages: readonly ChatMessage[],
  render: (messages: readonly ChatMessage[]) => string,
): { text: string; spans: TextSpan[] } {
  const text = render(messages);
  const open = "\uE000";
  const close = "\uE001";
  if (messages.every((m) => m.content.length === 0) || text.includes(open)) {
    return { text, spans: [] };
  }
  let withMarks: string;
  try {
    withMarks = render(
      messages.map((m, i) => m.content.length === 0 ? m : { ...m, content: `${open}${i}${close}` }),
    );
  } catch {
    return { text, spans: [] };
  }
  const parts = withMarks.split(/\uE000\d+\uE001/);
  const first = parts[0] as string;
  const last = parts[parts.length - 1] as string;
  if (!text.startsWith(first) || !text.endsWith(last)) return { text, spans: [] };
  const spans: TextSpan[] = [];
  let cursor = first.length;
  for (let p = 1; p < parts.length; p++) {
    const part = parts[p] as string;
    const end = p === parts.length - 1 ? text.length - part.length : text.indexOf(part, cursor);
    if (end < cursor) return { text, spans: [] };
    if (end > cursor) spans.push({ start: cursor, end });
    cursor = end + part.length;
  }
  return { text, spans };
}

/** The text of a token field of tokenizer_config.json (a string or `{content}`). */
function tokenText(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (typeof value === "object" && value !== null && "content" in value) {
    const content = (value as { content: unknown }).content;
    if (typeof content === "string") return content;
  }
  return undefined;
}

function parseObject(text: string, file: string): Json {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`Cannot parse "${file}": not valid JSON (${(e as Error).message})`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new Error(`Cannot parse "${file}": expected a JSON object`);
  }
  return json as Json;
}
