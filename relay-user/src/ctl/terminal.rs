//! The terminal, for `relayctl watch` and for fitting tables: its size, and
//! a raw-input mode that is always undone (also on error and on `q`).

use std::{
    io::{IsTerminal, Read, Write},
    os::fd::AsFd,
    time::Duration,
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::termios::{self, LocalFlags, SetArg, Termios},
};

/// Columns available to a table: the terminal's width when stdout is one,
/// else `$COLUMNS` when set, else None (no limit: pipes and scripts get
/// every column).
pub fn width() -> Option<usize> {
    if std::io::stdout().is_terminal()
        && let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size()
    {
        return Some(w as usize);
    }
    std::env::var("COLUMNS").ok()?.parse().ok()
}

/// Rows of the terminal, 24 when unknown.
pub fn height() -> usize {
    terminal_size::terminal_size().map_or(24, |(_, terminal_size::Height(h))| h as usize)
}

/// Keys read without echo or line buffering while it lives; the previous
/// mode comes back on drop. Ctrl-C arrives as a byte (ISIG off), so the
/// screen is restored by us rather than left behind by a signal.
pub struct RawInput {
    saved: Option<Termios>,
}

/// What the user pressed.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    Quit,
    Other,
}

impl RawInput {
    pub fn new() -> Self {
        let stdin = std::io::stdin();
        let saved = stdin
            .is_terminal()
            .then(|| termios::tcgetattr(stdin.as_fd()).ok())
            .flatten();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            raw.local_flags
                .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
            let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        }
        let mut out = std::io::stdout();
        // Alternate screen, cursor hidden.
        let _ = out.write_all(b"\x1b[?1049h\x1b[?25l");
        let _ = out.flush();
        Self { saved }
    }

    /// Waits up to `timeout` for a key.
    pub fn wait(&self, timeout: Duration) -> Option<Key> {
        if self.saved.is_none() {
            // Not a terminal (a pipe, a test): nothing to read, just wait.
            std::thread::sleep(timeout);
            return None;
        }
        let stdin = std::io::stdin();
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => {
                let mut b = [0u8; 16];
                match stdin.lock().read(&mut b) {
                    // End of input (ssh closed): stop too.
                    Ok(0) => Some(Key::Quit),
                    Ok(n) if b[..n].iter().any(|c| matches!(c, b'q' | b'Q' | 3 | 4)) => {
                        Some(Key::Quit)
                    }
                    Ok(_) => Some(Key::Other),
                    Err(_) => Some(Key::Quit),
                }
            }
            _ => None,
        }
    }
}

impl Default for RawInput {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RawInput {
    fn drop(&mut self) {
        let mut out = std::io::stdout();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// Clears the screen and homes the cursor, then prints `lines`.
pub fn paint(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    let mut frame = String::from("\x1b[H\x1b[2J");
    for l in lines {
        frame.push_str(l);
        frame.push_str("\r\n");
    }
    let _ = out.write_all(frame.as_bytes());
    let _ = out.flush();
}
