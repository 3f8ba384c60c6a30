//! Classifier-free guidance.
//!
//! The pipeline runs the conditional and unconditional inputs through the UNet as ONE batch of
//! two, ordered **[unconditional; conditional]**: the first half of the batch (and of the model
//! output) is the unconditional (empty-prompt) branch, the second half the conditional one. This
//! is diffusers' order (`torch.cat([negative_prompt_embeds, prompt_embeds])`, then
//! `noise_pred.chunk(2)` gives `uncond, text`).

/// `uncond + scale * (cond - uncond)`, evaluated as `scale * cond + (1 - scale) * uncond`.
///
/// The two are equal algebraically; this form makes `scale == 1` return `cond` and `scale == 0`
/// return `uncond` bit for bit (for finite inputs), so "no guidance" costs no accuracy.
pub fn guidance(uncond: &[f32], cond: &[f32], scale: f32) -> Vec<f32> {
    assert_eq!(
        uncond.len(),
        cond.len(),
        "guidance: uncond and cond lengths differ"
    );
    let keep = 1.0 - scale;
    uncond
        .iter()
        .zip(cond)
        .map(|(&u, &c)| scale * c + keep * u)
        .collect()
}

/// Splits a batch-of-two model output into `(uncond, cond)` halves (order in the module docs).
pub fn split_batch(batch: &[f32]) -> (&[f32], &[f32]) {
    let half = batch.len() / 2;
    assert_eq!(2 * half, batch.len(), "split_batch: odd length");
    batch.split_at(half)
}

/// Applies [`guidance`] to a batch-of-two model output `[uncond; cond]`.
pub fn guided_from_batch(batch: &[f32], scale: f32) -> Vec<f32> {
    let (uncond, cond) = split_batch(batch);
    guidance(uncond, cond, scale)
}

/// The model input for guidance: the latent twice, `[x; x]`, one copy per branch.
pub fn batch_of_two(x: &[f32]) -> Vec<f32> {
    let mut v = Vec::with_capacity(2 * x.len());
    v.extend_from_slice(x);
    v.extend_from_slice(x);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::NoiseGen;

    #[test]
    fn scale_one_is_cond_and_zero_is_uncond_exactly() {
        let mut g = NoiseGen::new(3);
        let u: Vec<f32> = g.sample(257).iter().map(|x| x * 1e3).collect();
        let c = g.sample(257);
        assert_eq!(guidance(&u, &c, 1.0), c);
        assert_eq!(guidance(&u, &c, 0.0), u);
    }

    #[test]
    fn matches_design_formula() {
        let (u, c) = ([1.0f32, -2.0, 0.5], [3.0f32, -1.0, 0.25]);
        let got = guidance(&u, &c, 7.5);
        for i in 0..3 {
            let want = u[i] + 7.5 * (c[i] - u[i]);
            assert!((got[i] - want).abs() < 1e-5);
        }
    }

    #[test]
    fn batch_halves_are_uncond_then_cond() {
        let batch = [1.0f32, 2.0, 10.0, 20.0];
        assert_eq!(
            split_batch(&batch),
            (&[1.0f32, 2.0][..], &[10.0f32, 20.0][..])
        );
        assert_eq!(guided_from_batch(&batch, 1.0), vec![10.0, 20.0]);
        assert_eq!(guided_from_batch(&batch, 0.0), vec![1.0, 2.0]);
        assert_eq!(batch_of_two(&[1.0, 2.0]), vec![1.0, 2.0, 1.0, 2.0]);
    }
}
