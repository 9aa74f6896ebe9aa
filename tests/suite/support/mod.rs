//! Shared helpers for integration tests.
#![allow(dead_code)]

pub mod config;
pub mod hook;
pub mod relay;
pub mod sshd;

/// A child process that is killed (SIGKILL) and reaped when dropped, so a failed assertion leaves no
/// `hapull` process running behind the test. Derefs to the [`std::process::Child`].
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // A process that already exited (and was waited for) is left alone: its pid may be reused.
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
