//! Text tables that fit a terminal: columns that do not fit are left out,
//! least important first, then the widest shrinkable column is cut with an
//! ellipsis. No I/O: the width comes from the caller.

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub align: Align,
    /// 0: always shown; otherwise higher numbers are left out first.
    pub priority: u8,
    /// May be cut with an ellipsis when nothing else helps.
    pub shrink: bool,
}

impl Column {
    pub const fn new(name: &'static str, align: Align, priority: u8, shrink: bool) -> Self {
        Self {
            name,
            align,
            priority,
            shrink,
        }
    }
}

const GAP: usize = 2;
/// Narrowest a shrinkable column gets.
const MIN_SHRUNK: usize = 8;

fn width_of(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `width` characters, the last one an ellipsis when cut.
pub fn ellipsize(s: &str, width: usize) -> String {
    if width_of(s) <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// Renders the header and rows. `width` None: every column, full width
/// (`--wide`, or output that is not a terminal).
pub fn render(columns: &[Column], rows: &[Vec<String>], width: Option<usize>) -> Vec<String> {
    let mut widths: Vec<usize> = columns.iter().map(|c| width_of(c.name)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width_of(cell));
        }
    }
    let mut shown: Vec<bool> = vec![true; columns.len()];
    let total = |shown: &[bool], widths: &[usize]| -> usize {
        let n = shown.iter().filter(|s| **s).count();
        let sum: usize = widths
            .iter()
            .zip(shown)
            .filter(|(_, s)| **s)
            .map(|(w, _)| *w)
            .sum();
        sum + GAP * n.saturating_sub(1)
    };
    if let Some(limit) = width {
        // Leave out the least important columns (rightmost first on ties).
        while total(&shown, &widths) > limit {
            let victim = columns
                .iter()
                .enumerate()
                .filter(|(i, c)| shown[*i] && c.priority > 0)
                .max_by_key(|(i, c)| (c.priority, *i))
                .map(|(i, _)| i);
            match victim {
                Some(i) => shown[i] = false,
                None => break,
            }
        }
        // Then cut the widest shrinkable column, one character at a time.
        while total(&shown, &widths) > limit {
            let victim = columns
                .iter()
                .enumerate()
                .filter(|(i, c)| {
                    shown[*i] && c.shrink && widths[*i] > MIN_SHRUNK.max(width_of(c.name))
                })
                .max_by_key(|(i, _)| widths[*i])
                .map(|(i, _)| i);
            match victim {
                Some(i) => widths[i] -= 1,
                None => break,
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if !shown[i] {
                continue;
            }
            if !out.is_empty() {
                out.push_str(&" ".repeat(GAP));
            }
            let cell = ellipsize(cell, widths[i]);
            let pad = widths[i] - width_of(&cell);
            match columns[i].align {
                Align::Left => {
                    out.push_str(&cell);
                    out.push_str(&" ".repeat(pad));
                }
                Align::Right => {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(&cell);
                }
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(&mut columns.iter().map(|c| c.name))];
    for row in rows {
        let mut cells = row
            .iter()
            .map(String::as_str)
            .chain(std::iter::repeat(""))
            .take(columns.len());
        out.push(line(&mut cells));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLS: [Column; 4] = [
        Column::new("ID", Align::Right, 0, false),
        Column::new("CALL", Align::Left, 0, true),
        Column::new("AGE", Align::Right, 3, false),
        Column::new("PACKETS", Align::Right, 1, false),
    ];

    fn rows() -> Vec<Vec<String>> {
        vec![vec![
            "1".into(),
            "a-very-long-call-id@pbx.example".into(),
            "10s".into(),
            "12345".into(),
        ]]
    }

    #[test]
    fn everything_when_unlimited() {
        let out = render(&COLS, &rows(), None);
        assert_eq!(out[0], "ID  CALL                             AGE  PACKETS");
        assert_eq!(out[1], " 1  a-very-long-call-id@pbx.example  10s    12345");
    }

    #[test]
    fn drops_low_priority_columns_then_ellipsizes() {
        let out = render(&COLS, &rows(), Some(45));
        assert_eq!(out[0], "ID  CALL                             PACKETS");
        assert!(out.iter().all(|l| width_of(l) <= 45), "{out:#?}");
        let out = render(&COLS, &rows(), Some(30));
        assert_eq!(out[0], "ID  CALL");
        assert_eq!(out[1], " 1  a-very-long-call-id@pbx.e…");
        assert!(out.iter().all(|l| width_of(l) <= 30), "{out:#?}");
        // Too narrow for even the must-have columns: still no panic, and
        // shrinkable columns stop at their minimum.
        let out = render(&COLS, &rows(), Some(5));
        assert_eq!(out[1], " 1  a-very-…");
    }

    #[test]
    fn short_rows_are_padded() {
        let out = render(&COLS, &[vec!["7".into()]], None);
        assert_eq!(out[1], " 7");
    }
}
