//! A subsystem's live view of its own config section. Reloads swap the whole config at once; a
//! subsystem given a [`Live`] reads its section as it is when it uses a setting, without depending on
//! the config type that composes every section (which would tie every subsystem to every other).
use std::sync::Arc;

use arc_swap::access::{DynAccess, Map};
use arc_swap::ArcSwap;

/// The current value of one config section.
pub type Live<T> = Arc<dyn DynAccess<T> + Send + Sync>;

/// The section that `project` picks out of the config in `whole`, as it is at each read.
pub fn section<Whole, T>(whole: &Arc<ArcSwap<Whole>>, project: fn(&Whole) -> &T) -> Live<T>
where
    Whole: Send + Sync + 'static,
    T: 'static,
{
    Arc::new(Map::new(whole.clone(), project))
}

/// A fixed section (tests and benches that never reload).
pub fn fixed<T: Clone + Send + Sync + 'static>(value: T) -> Live<T> {
    Arc::new(arc_swap::access::Constant(value))
}
