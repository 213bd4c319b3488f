//! relayctl's building blocks. Parsing, rows and rates ([`flows`],
//! [`drops`], [`table`], [`human`]) do no I/O and are unit-tested; [`source`]
//! (control socket or pinned maps) and [`terminal`] are the I/O.

pub mod drops;
pub mod flows;
pub mod human;
pub mod source;
pub mod table;
pub mod terminal;
