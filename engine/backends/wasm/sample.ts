/**
 * The wasm backend's sampling kernel on its own (kernels.c `run_sample`), for
 * kernel tests: logit rows drawn on worker threads as their `RowSampling`
 * says, by the algorithm of shaders/sample.wgsl (edits, greedy or a draw
 * truncated by top-k, top-p and min-p, grammar masks).
 *
 * @example
 * ```ts
 * import { wasmSampleRows } from "./sample.ts";
 * import { GREEDY_ROW } from "../../gpu/sampling.ts";
 * const ids = await wasmSampleRows(new Float32Array([0, 3, 1, 9]), 4, 3, [GREEDY_ROW]);
 * console.log(ids[0]); // 1: id 3 is padding
 * ```
 *
 * @module
 */
import {
  EDIT_BYTES,
  maskWords,
  packMasks,
  packRows,
  ROW_BYTES,
  type RowSampling,
} from "../../gpu/sampling.ts";
import { WasmThreads } from "./threads.ts";
import { F, MODEL_FIELDS } from "./wasm_runner.ts";

/**
 * ids[r] for each row r of `logits` (rows of `stride`, ids ≥ `valid` never chosen);
 * a null row (sampled on the host) keeps `initial`.
 */
export async function wasmSampleRows(
  logits: Float32Array,
  stride: number,
  valid: number,
  rows: readonly (RowSampling | null)[],
  { threads = 2, initial = 0 }: { threads?: number; initial?: number } = {},
): Promise<Uint32Array> {
  const R = rows.length;
  const edits = rows.reduce((n, r) => n + (r?.edits.length ?? 0), 0);
  const rowData = new ArrayBuffer(Math.max(1, R) * ROW_BYTES);
  const editData = new ArrayBuffer(Math.max(1, edits) * EDIT_BYTES);
  if (packRows(rows, rowData, editData, Math.max(1, edits)) !== edits) {
    throw new Error("packRows did not write every edit");
  }
  const pool = await WasmThreads.start(threads);
  try {
    const words = maskWords(stride);
    const model = pool.alloc(MODEL_FIELDS.length * 4);
    const at = {
      logits: pool.alloc(Math.max(1, R * stride) * 4),
      ids: pool.alloc(Math.max(1, R) * 4),
      rows: pool.alloc(rowData.byteLength),
      edits: pool.alloc(editData.byteLength),
      masks: pool.alloc(Math.max(1, R * words) * 4),
    };
    pool.f32(at.logits, R * stride).set(logits.subarray(0, R * stride));
    pool.u32(at.ids, R).fill(initial);
    new Uint8Array(pool.memory.buffer, at.rows, rowData.byteLength).set(new Uint8Array(rowData));
    new Uint8Array(pool.memory.buffer, at.edits, editData.byteLength).set(
      new Uint8Array(editData),
    );
    packMasks(rows, pool.u32(at.masks, R * words), words);
    const m = pool.u32(model, MODEL_FIELDS.length);
    m[F.threads] = threads;
    m[F.vocab] = stride;
    m[F.valid_vocab] = valid;
    m[F.logit_rows] = R;
    m[F.logits] = at.logits;
    m[F.out_ids] = at.ids;
    m[F.sample_rows] = at.rows;
    m[F.edits] = at.edits;
    m[F.masks] = at.masks;
    m[F.mask_words] = words;
    await pool.run("run_sample", model);
    return pool.u32(at.ids, R).slice();
  } finally {
    pool.close();
  }
}
