//! Prefill: the prompt (vision tower, projector, decoder) into an empty session, at once or in
//! stages. A continuous batch prefills an admitted request in stages of a few layers (of the
//! vision tower, then of the decoder) with the running rows' decode steps in between, so that
//! they wait for one stage at a time instead of one whole prompt ([`crate::batching`]). The
//! stages run exactly the arithmetic of a prefill at once.

use candle_core::Tensor;

use super::{PaliGemma, Session};
use crate::decoder::{LogitsFor, Prefill, Step};
use crate::error::{Error, Result};

/// A prefill in progress ([`PaliGemma::begin_prefill`]).
pub struct StagedPrefill {
    prompts: Vec<Vec<u32>>,
    sliding_window: bool,
    stage: Stage,
}

enum Stage {
    /// The vision tower's hidden state before layer `next`.
    Vision { x: Tensor, next: usize },
    Decoder(Prefill),
}

impl PaliGemma {
    /// Runs the prompt into an empty session and returns the logits of its last position,
    /// `[vocab]`.
    pub fn prefill(&self, session: &mut Session, input_ids: &[u32], pixel_values: &[f32]) -> Result<Tensor> {
        Ok(self.prefill_batch(session, &[input_ids], &[pixel_values])?.squeeze(0)?)
    }

    /// Batched prefill: one image and one prompt per sequence, all prompts of equal length
    /// (true for one checkpoint and one task prefix). Returns `[B, vocab]`.
    pub fn prefill_batch(&self, session: &mut Session, prompts: &[&[u32]], images: &[&[f32]]) -> Result<Tensor> {
        let mut staged = self.begin_prefill_batch(session, prompts, images)?;
        self.advance_prefill(session, &mut staged, &mut || true)?;
        self.finish_prefill_batch(session, staged)
    }

    /// Starts a single-sequence prefill: checks the inputs and embeds the image's patches.
    /// Nothing is written to `session` yet but its prefix length.
    pub fn begin_prefill(&self, session: &mut Session, input_ids: &[u32], pixel_values: &[f32]) -> Result<StagedPrefill> {
        self.begin_prefill_batch(session, &[input_ids], &[pixel_values])
    }

    /// Runs the next layer of `staged` (of the vision tower, then of the decoder), and more
    /// while `more()` says so; true once every layer has run.
    pub fn advance_prefill(&self, session: &Session, staged: &mut StagedPrefill, more: &mut dyn FnMut() -> bool) -> Result<bool> {
        loop {
            let done = match &mut staged.stage {
                Stage::Vision { x, next } => {
                    *x = self.vision.layer(*next, x)?;
                    *next += 1;
                    if *next == self.vision.num_layers() {
                        staged.stage = self.decoder_stage(&staged.prompts, staged.sliding_window, x)?;
                    }
                    false
                }
                Stage::Decoder(prefill) => self.decoder.prefill_layers(prefill, &session.cache, 1, LogitsFor::Last)?,
            };
            if done {
                return Ok(true);
            }
            if !more() {
                return Ok(false);
            }
        }
    }

    /// Ends a single-sequence prefill whose layers have all run: commits its positions and
    /// returns the logits of its last position, `[vocab]`.
    pub fn finish_prefill(&self, session: &mut Session, staged: StagedPrefill) -> Result<Tensor> {
        Ok(self.finish_prefill_batch(session, staged)?.squeeze(0)?)
    }

    fn begin_prefill_batch(&self, session: &mut Session, prompts: &[&[u32]], images: &[&[f32]]) -> Result<StagedPrefill> {
        if prompts.is_empty() || prompts.len() != session.batch || images.len() != session.batch {
            return Err(Error::invalid("batch", format!("session holds {} sequences; got {} prompts and {} images", session.batch, prompts.len(), images.len())));
        }
        let len = prompts[0].len();
        for ids in prompts {
            self.check_input_ids(ids)?;
            if ids.len() != len {
                return Err(Error::invalid("inputIds", "batched prompts must all have the same length"));
            }
        }
        if !session.is_empty() {
            return Err(Error::invalid("session", "prefill needs an empty session"));
        }
        let x = self.vision.embed_patches(&self.pixel_batch(images)?)?;
        session.prefix_len = len;
        let prompts: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
        let stage = match self.vision.num_layers() {
            0 => self.decoder_stage(&prompts, session.sliding_window, &x)?,
            _ => Stage::Vision { x, next: 0 },
        };
        Ok(StagedPrefill { prompts, sliding_window: session.sliding_window, stage })
    }

    /// From the vision tower's last hidden state to the decoder's first layer: the post-norm,
    /// the projector, and the prompt's embeddings with the image rows in place.
    fn decoder_stage(&self, prompts: &[Vec<u32>], sliding_window: bool, vision_hidden: &Tensor) -> Result<Stage> {
        let features = self.projector.forward(&self.vision.finish(vision_hidden)?)?;
        let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let embeds = self.embed_with_features(&prompts, &features)?;
        let step = Step { offset: 0, prefix_len: prompts[0].len(), sliding_window };
        Ok(Stage::Decoder(self.decoder.begin_prefill(&embeds, step)?))
    }

    fn finish_prefill_batch(&self, session: &mut Session, staged: StagedPrefill) -> Result<Tensor> {
        let Stage::Decoder(prefill) = staged.stage else {
            return Err(Error::Internal("a prefill finished before its decoder layers ran".into()));
        };
        let logits = self.decoder.finish_prefill(prefill, &mut session.cache, LogitsFor::Last)?;
        Ok(logits.squeeze(1)?)
    }
}
