//! The Murakkab compiler: the SQL front end's own pieces.
//!
//! It holds the typed `murakkab.*` session options ([`MurakkabOptions`]), which every later
//! stage reads; the rewrite that makes named arguments positional
//! ([`make_arguments_positional`]); and the AI logical node [`AiMap`] with the rule that lifts
//! model calls out of projections, filters and aggregates into it ([`LiftAiCalls`]), so the
//! optimizer sees AI work as plan nodes it can reorder, swap and cascade rather than as opaque
//! functions.

mod ai_map;
mod carbon_series;
mod lift_ai_calls;
mod named_arguments;
mod options;

pub use ai_map::{AiMap, StopAfter};
pub use carbon_series::CarbonSeries;
pub use lift_ai_calls::{LiftAiCalls, MODEL_FUNCTIONS};
pub use named_arguments::make_arguments_positional;
pub use options::{MurakkabOptions, Objective, OnError, OverBudget, Priority};
