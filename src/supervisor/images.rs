//! Replaced builds are freed by the supervisor, off the handoff.
//!
//! A deploy renames a new build over the old one; the old file's blocks
//! are freed when its last holder closes it. Left alone, that holder is the
//! old generation as it exits, at the end of a handoff, and on a journaling
//! filesystem the freeing (and a discard, where the filesystem is mounted
//! with one) stalls the daemons' own `fsync`s for milliseconds while
//! requests queue. So the supervisor holds each generation's executable
//! from its spawn (or adoption) and closes it [`IMAGE_RELEASE`] after the
//! generation is gone, and never while a handoff, a drain, a stop or a
//! retirement is under way (a probation does not hold it back). A re-exec
//! closes the ones waiting (they are close-on-exec). A build still on disk
//! under another name is not freed by any of this.

use std::collections::VecDeque;
use std::time::Instant;

use crate::protocol::{LifecycleState, RetireState};
use crate::timeouts::IMAGE_RELEASE;

/// Whether images may be released now: no handoff, no stop (its drain is
/// the last one: they close as the supervisor exits), and no old generation
/// draining or being retired (one kept for a probation, or as a warm
/// standby, does not count; nor does a restart's wait: a crash loop must
/// not pile images up).
pub(crate) fn quiet(
    state: LifecycleState,
    mut retirees: impl Iterator<Item = RetireState>,
) -> bool {
    !matches!(state, LifecycleState::HandingOff | LifecycleState::Stopping)
        && retirees.all(|retiree| matches!(retiree, RetireState::Probation | RetireState::Standby))
}

/// Executables of generations that are gone, each with when it may be
/// closed. Generic over what is held, so the decisions test without files.
#[derive(Debug)]
pub(crate) struct Images<T> {
    releasing: VecDeque<(Instant, T)>,
}

impl<T> Default for Images<T> {
    fn default() -> Self {
        Images {
            releasing: VecDeque::new(),
        }
    }
}

impl<T> Images<T> {
    /// A generation's executable, its generation gone at `now`.
    pub(crate) fn retire(&mut self, image: T, now: Instant) {
        self.releasing.push_back((now + IMAGE_RELEASE, image));
    }

    /// When the next one is due, if any.
    fn next_due(&self) -> Option<Instant> {
        self.releasing.front().map(|(due, _)| *due)
    }

    /// When the driver must wake for them: never unless `quiet` (the event
    /// that ends a handoff or a drain wakes it anyway; a due image must not
    /// spin its loop meanwhile).
    pub(crate) fn wakeup(&self, quiet: bool) -> Option<Instant> {
        self.next_due().filter(|_| quiet)
    }

    /// Takes every image due by `now` (none unless `quiet`: no handoff and
    /// no drain under way), for the caller to close.
    pub(crate) fn take_due(&mut self, now: Instant, quiet: bool) -> Vec<T> {
        let mut due = Vec::new();
        while quiet && self.next_due().is_some_and(|at| at <= now) {
            due.extend(self.releasing.pop_front().map(|(_, image)| image));
        }
        due
    }

    /// How many are held.
    pub(crate) fn len(&self) -> usize {
        self.releasing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_means_no_handoff_and_no_retirement_but_a_probation() {
        use LifecycleState::{HandingOff, Serving, Starting, Stopping};
        use RetireState::{Draining, Probation, Retiring, Standby};
        assert!(quiet(Serving, [].into_iter()));
        assert!(quiet(Starting, [].into_iter()), "a restart's wait");
        assert!(
            !quiet(Stopping, [].into_iter()),
            "the last drain: freed at exit"
        );
        assert!(!quiet(HandingOff, [].into_iter()));
        assert!(quiet(Serving, [Probation, Standby].into_iter()));
        assert!(!quiet(Serving, [Probation, Draining].into_iter()));
        assert!(!quiet(Serving, [Retiring].into_iter()));
    }

    #[test]
    fn an_image_is_released_once_due_and_only_when_quiet() {
        let start = Instant::now();
        let mut images = Images::default();
        images.retire(1, start);
        images.retire(2, start + IMAGE_RELEASE / 2);
        assert_eq!(images.wakeup(true), Some(start + IMAGE_RELEASE));
        assert!(images.take_due(start, true).is_empty(), "not yet due");
        let due = start + IMAGE_RELEASE;
        assert!(
            images.take_due(due, false).is_empty(),
            "a handoff is under way"
        );
        assert_eq!(images.wakeup(false), None, "nothing to wake for then");
        assert_eq!(images.take_due(due, true), vec![1]);
        assert_eq!(images.len(), 1);
        assert_eq!(images.take_due(due + IMAGE_RELEASE, true), vec![2]);
        assert_eq!(images.wakeup(true), None);
    }
}
