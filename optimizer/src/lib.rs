//! The Murakkab cost-based optimizer: the cost model and the rules over AI plan nodes.
//!
//! Each rule lives in its own file and chooses *how* an AI call runs (model size, order,
//! cascades, fusion, device) from quality, latency, energy and carbon estimates. No rules exist
//! yet: the AI plan nodes they rewrite come with the batching executor.
