//! The Murakkab catalog: where things live on disk and what models exist.
//!
//! This crate depends on no other Murakkab crate. It answers two questions every other layer
//! asks: *where* (the one home directory, [`MurakkabHome`], for models, caches, statistics and
//! history) and *what* (the [`ModelCard`]s of the models Murakkab knows, shipped with the binary,
//! and whether each one is pulled). Model identity is a catalog entry, never a string or a magic
//! number scattered through the code.

mod builtin_models;
mod home;
mod model_card;

pub use builtin_models::builtin_models;
pub use home::{HOME_ENV, MurakkabHome};
pub use model_card::{Architecture, ModelCard, ModelFile, ModelSource, ModelStatus, Task};

/// Every model card known to this build, with whether it is pulled under `home`.
pub fn model_statuses(home: &MurakkabHome) -> Vec<(ModelCard, ModelStatus)> {
    builtin_models()
        .into_iter()
        .map(|card| {
            let status = card.status(home);
            (card, status)
        })
        .collect()
}
