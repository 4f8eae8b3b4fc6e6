//! The Murakkab cost-based optimizer: the cost model and the rules over AI plan nodes.
//!
//! Each rule lives in its own file, with a doc that shows the plan before and after and says
//! when it does not apply. The rules choose *how* an AI call runs (model size, order, cascades,
//! fusion, device) from quality, latency, energy and carbon estimates; the first ones are exact
//! relational rewrites that keep rows away from the model.
//!
//! `order_predicates`, `semantic_join` and `choose_model` need to run the plan below a call (a sample) and the
//! models, which a DataFusion optimizer rule cannot (rules are synchronous and see no data), so
//! they run at the start of physical planning, through [`ChoosingQueryPlanner`].

mod choose_model;
mod compared_label;
pub mod cost_model;
mod extract_choice;
mod order_predicates;
pub mod proxy_training;
pub mod quality;
mod reuse_ai_columns;
mod sampling;
mod semantic_join;
mod top_k_below_ai_map;
mod top_k_over_ai_filter;

pub use choose_model::{ChoosingQueryPlanner, ModelChooser};
pub use order_predicates::PredicateOrderer;
pub use reuse_ai_columns::ReuseAiColumns;
pub use semantic_join::SemanticJoin;
pub use top_k_below_ai_map::TopKBelowAiMap;
pub use top_k_over_ai_filter::TopKOverAiFilter;
