//! Layers of the stage being built whose blobs are still being compressed in the background,
//! and the step cache records waiting for them.
//!
//! A step's layer is usable by the next step as soon as its files are unpacked and its diff_id
//! is known; compressing it into a blob can overlap with that next step (a RUN usually leaves
//! a core idle). Until then the stage carries a placeholder [`LayerInfo`] (real diff_id, no
//! blob digest yet, empty media type), and its cache record waits here. `settle` waits for
//! every blob, puts the real layers into the image and returns the records to save: a stage
//! settles before its image is used anywhere else, so placeholders never leave a stage.

use std::collections::BTreeMap;

use super::cache::StepRecord;
use crate::digest::Digest;
use crate::dockerfile::Location;
use crate::layer::{LayerInfo, PendingLayer};

/// Blobs being compressed for the current stage, with the step that made each.
#[derive(Debug, Default)]
pub(crate) struct PendingLayers {
    layers: Vec<(PendingLayer, Location, String)>,
    /// (stage index, record) of steps whose layer is pending.
    records: Vec<(usize, StepRecord)>,
}

/// What a stage's pending work turned into.
pub(crate) struct Settled {
    /// Cache records, now with their layers, to save (stage index, record).
    pub records: Vec<(usize, StepRecord)>,
}

/// Why a pending layer failed, and the step that made it.
pub(crate) struct SettleError {
    pub location: Location,
    pub instruction: String,
    pub message: String,
}

impl PendingLayers {
    /// Takes in a layer whose blob is being compressed, made by `instruction` at `location`;
    /// returns its placeholder for the stage's layer list.
    pub fn add(
        &mut self,
        layer: PendingLayer,
        location: &Location,
        instruction: &str,
    ) -> LayerInfo {
        let placeholder = LayerInfo {
            diff_id: layer.diff_id.clone(),
            digest: layer.diff_id.clone(),
            size: 0,
            media_type: String::new(),
        };
        self.layers
            .push((layer, location.clone(), instruction.to_string()));
        placeholder
    }

    /// Whether `layer` is a placeholder from [`PendingLayers::add`].
    pub fn is_placeholder(&self, layer: &LayerInfo) -> bool {
        layer.media_type.is_empty()
            && self
                .layers
                .iter()
                .any(|(pending, _, _)| pending.diff_id == layer.diff_id)
    }

    /// Keeps a cache record until its layer is settled.
    pub fn defer_record(&mut self, stage: usize, record: StepRecord) {
        self.records.push((stage, record));
    }

    /// Waits for every pending blob and replaces the placeholders in `layers` by the real
    /// layers. On error the first failing step is reported; records are then dropped.
    pub fn settle(&mut self, layers: &mut [LayerInfo]) -> Result<Settled, SettleError> {
        let mut done: BTreeMap<Digest, LayerInfo> = BTreeMap::new();
        let mut first_error = None;
        for (pending, location, instruction) in std::mem::take(&mut self.layers) {
            match pending.wait() {
                Ok(info) => {
                    done.insert(info.diff_id.clone(), info);
                }
                Err(e) if first_error.is_none() => {
                    first_error = Some(SettleError {
                        location,
                        instruction,
                        message: format!("cannot write the layer: {e}"),
                    });
                }
                Err(_) => {}
            }
        }
        let records = std::mem::take(&mut self.records);
        if let Some(error) = first_error {
            return Err(error);
        }
        for layer in layers.iter_mut() {
            if layer.media_type.is_empty()
                && let Some(real) = done.get(&layer.diff_id)
            {
                *layer = real.clone();
            }
        }
        let records = records
            .into_iter()
            .map(|(stage, mut record)| {
                if let Some(layer) = &record.layer
                    && let Some(real) = done.get(&layer.diff_id)
                {
                    record.layer = Some(real.into());
                }
                (stage, record)
            })
            .collect();
        Ok(Settled { records })
    }
}
