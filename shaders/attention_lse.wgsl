// The log-sum-exp merge of attention pieces, shared by attention_prefill.wgsl
// and attention_merge.wgsl (their sources are this file followed by theirs):
// one formula, applied piece by piece in key order, in both.

/**
 * Merges a piece's (m, l) into the running (M, L). Returns (M', L', a, b): the
 * running output becomes O' = O·a + acc·b, i.e. fma(O, a, acc · b).
 */
fn lse_merge(run_m: f32, run_l: f32, m: f32, l: f32) -> vec4<f32> {
  let mx = max(run_m, m);
  let a = exp(run_m - mx);
  let b = exp(m - mx);
  return vec4(mx, fma(run_l, a, l * b), a, b);
}
