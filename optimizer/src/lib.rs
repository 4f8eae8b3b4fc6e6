//! The Murakkab cost-based optimizer: the cost model and the rules over AI plan nodes.
//!
//! Each rule lives in its own file, with a doc that shows the plan before and after and says
//! when it does not apply. The rules choose *how* an AI call runs (model size, order, cascades,
//! fusion, device) from quality, latency, energy and carbon estimates; the first ones are exact
//! relational rewrites that keep rows away from the model.

mod top_k_below_ai_map;

pub use top_k_below_ai_map::TopKBelowAiMap;
