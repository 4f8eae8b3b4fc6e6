//! The Murakkab runtime: model backends, tokenizers, the per-model batchers, the device
//! scheduler, caches, energy meters, and the physical AI operators with their `ExtensionPlanner`.
//!
//! Empty until the model runtime lands: plain SQL needs nothing from it.
